"""Sources built with other tools' own exporters and input conventions, on the prepared Adult data.

Each builder trains a small model and returns a ``BuiltSource``: the ONNX file
and the spec bindings (``inputs``, ``output``) it needs.

torch_fit         brief training and checked export of hand-written torch sources
packed            DeepCTR-style sources with one packed float input
signatures        int32 ids, [batch, 1] columns, feature subsets, tf2onnx-style names
rechub_sources    ranking models trained and exported with torch-rechub
sklearn_source    a scikit-learn Pipeline (one-hot, scaling, MLP) converted with skl2onnx
trees_source      a LightGBM classifier converted with onnxmltools (a head-only source)
"""
