"""Decomposition: frontiers as min-width cuts, levels, identity blocks, convexity and user frontiers."""

from __future__ import annotations

import onnx
import onnx.parser
import pytest

from akfc.errors import ModelError
from akfc.passes import Decomposition, decompose, normalize
from akfc.passes.dataflow import DATA, INPUT


def _decompose(model: onnx.ModelProto, **options) -> Decomposition:
    return decompose(normalize(model).model, **options)


def _frontiers(decomposition: Decomposition) -> list[list[str]]:
    return [list(frontier.names) for frontier in decomposition.frontiers]


def _check_cut_properties(decomposition: Decomposition) -> None:
    """Every frontier is crossed by every input-to-output path, and no component reads from a later one."""
    flow = decomposition.dataflow
    owner = {name: position for position, component in enumerate(decomposition.components) for name in component.nodes}
    for index, node in enumerate(flow.nodes):
        if node.name not in owner:
            continue
        for tensor in flow.data_inputs(index):
            producer = flow.producer.get(tensor)
            if producer is not None:
                assert owner[flow.nodes[producer].name] <= owner[node.name], f"{node.name} reads {tensor} from a later component"
    for frontier in decomposition.frontiers:
        blocked = set(frontier.names)
        reached = {name for name in flow.inputs if name not in blocked}
        for index, node in enumerate(flow.nodes):
            if any(name in reached for name in flow.data_inputs(index)):
                reached.update(name for name in node.output if name not in blocked)
        assert not reached & set(flow.outputs), f"a path avoids frontier {frontier.names}"


def test_chain_levels(chain):
    decomposition = _decompose(chain)
    assert _frontiers(decomposition) == [["x"], ["h1"], ["h2"], ["h3"]]
    assert [component.name for component in decomposition.components] == ["stem", "block1", "block2", "block3", "head"]
    assert decomposition.stem.identity
    assert decomposition.blocks[0].nodes == ("MatMul_0", "Add_1", "Relu_2")
    assert decomposition.head.nodes == ("MatMul_9", "Sigmoid_10")
    assert [spec.name for spec in decomposition.head.outputs] == ["y", "z"]
    assert [frontier.width for frontier in decomposition.frontiers] == [4, 8, 8, 8]
    _check_cut_properties(decomposition)


def test_chain_tensor_specs(chain):
    decomposition = _decompose(chain)
    spec = decomposition.blocks[0].outputs[0]
    assert (spec.name, spec.dtype, spec.shape, spec.width) == ("h1", "float", ("N", 8), 8)
    assert repr(spec) == "h1: float[N, 8]"


def test_chain_fractions(chain):
    decomposition = _decompose(chain)
    # Trunk FLOPs per layer: 80 (4 -> 8), 144 and 144 (8 -> 8).
    assert [round(frontier.fraction, 4) for frontier in decomposition.frontiers] == [0.0, round(80 / 368, 4), round(224 / 368, 4), 1.0]
    assert [component.flops for component in decomposition.components] == [0, 80, 144, 144, 17]
    assert [component.params for component in decomposition.components] == [0, 40, 72, 72, 8]


def test_chain_more_levels_than_layers(chain):
    decomposition = _decompose(chain, levels=5)
    assert len(decomposition.blocks) == 5
    assert [block.identity for block in decomposition.blocks].count(True) == 2
    assert _frontiers(decomposition)[0] == ["x"]
    assert _frontiers(decomposition)[-1] == ["h3"]
    _check_cut_properties(decomposition)


def test_chain_one_level(chain):
    decomposition = _decompose(chain, levels=1)
    assert _frontiers(decomposition) == [["x"], ["h3"]]
    assert len(decomposition.blocks[0].nodes) == 9


def test_two_branch_one_tensor_per_branch(two_branch):
    decomposition = _decompose(two_branch)
    frontiers = _frontiers(decomposition)
    assert frontiers[0] == ["e"]
    assert frontiers[1] == ["h1", "fm"]
    assert sorted(frontiers[2]) == ["fm", "h2"]
    assert sorted(frontiers[3]) == ["fm", "h3"]
    _check_cut_properties(decomposition)


def test_wide_deep_side_term_stays_live(wide_deep):
    decomposition = _decompose(wide_deep)
    frontiers = _frontiers(decomposition)
    assert frontiers[0] == ["x"]
    for frontier in frontiers[1:]:
        assert "w" in frontier
        assert decomposition.dataflow.tensors["w"].width == 1
    assert [sorted(frontier) for frontier in frontiers[1:]] == [["h1", "w"], ["h2", "w"], ["h3", "w"]]
    # The side term passes through blocks 2 and 3 unchanged.
    for block in decomposition.blocks[1:]:
        assert "w" in [spec.name for spec in block.inputs]
        assert "w" in [spec.name for spec in block.outputs]
    _check_cut_properties(decomposition)


def test_residual_cut_at_block_boundaries(residual):
    decomposition = _decompose(residual)
    assert _frontiers(decomposition) == [["x"], ["h1"], ["h3"], ["h4"]]
    assert decomposition.blocks[1].ops == {"MatMul": 2, "Relu": 2, "Add": 1}
    _check_cut_properties(decomposition)


def test_never_cuts_inside_a_layer(chain, two_branch, wide_deep, residual):
    interior = {"m1", "a1", "m2", "a2", "m3", "a3", "r"}
    for model in (chain, two_branch, wide_deep, residual):
        for frontier in _decompose(model).frontiers:
            assert not interior & set(frontier.names)


def test_two_outputs(two_outputs):
    decomposition = _decompose(two_outputs)
    assert _frontiers(decomposition) == [["x"], ["h1"], ["h1"], ["h2"]]
    assert [block.identity for block in decomposition.blocks] == [False, True, False]
    assert [spec.name for spec in decomposition.head.outputs] == ["probabilities", "z"]


def test_shared_output(shared_output):
    decomposition = decompose(normalize(shared_output, output="p").model)
    assert decomposition.outputs == ("p", "z")
    assert decomposition.head.ops == {"MatMul": 1, "Sigmoid": 1}
    _check_cut_properties(decomposition)


def test_unused_input(unused_input):
    decomposition = _decompose(unused_input)
    assert [spec.name for spec in decomposition.stem.inputs] == ["x"]


def test_unused_input_without_normalize(unused_input):
    model = normalize(unused_input).model
    decomposition = decompose(model)
    assert [spec.name for spec in decomposition.stem.outputs] == ["x"]


def test_shape_chain_never_cuts_shape_tensors(shape_chain):
    decomposition = _decompose(shape_chain)
    flow = decomposition.dataflow
    assert _frontiers(decomposition) == [["flat"], ["h1"], ["h2"], ["pooled"]]
    for frontier in decomposition.frontiers:
        for name in frontier.names:
            assert flow.tensor_class[name] in (INPUT, DATA)
            assert flow.tensors[name].batched
    owned = {name for component in decomposition.components for name in component.nodes}
    shape_nodes = [node.name for node in flow.nodes if node.op_type in ("Shape", "Gather", "Unsqueeze", "Concat")]
    assert shape_nodes and not owned & set(shape_nodes)


def test_user_frontier(chain):
    decomposition = _decompose(chain, frontiers={1: ["h2"]})
    # The only frontier left between h2 and the head frontier h3 is h2 itself, so block 2 passes h2 through.
    assert _frontiers(decomposition) == [["x"], ["h2"], ["h2"], ["h3"]]
    assert decomposition.blocks[1].identity


def test_user_stem_and_head(chain):
    decomposition = _decompose(chain, frontiers={0: ["h1"], 3: ["h2"]})
    assert _frontiers(decomposition) == [["h1"], ["h1"], ["h2"], ["h2"]]
    assert decomposition.head.ops == {"MatMul": 2, "Add": 1, "Relu": 1, "Sigmoid": 1}


def test_user_frontier_incomplete(two_branch):
    with pytest.raises(ModelError, match=r"tensors \['h2'\] do not form frontier 2: 'e' is computed before them and read by node 'ReduceSum_2' after them; add 'e'"):
        _decompose(two_branch, frontiers={2: ["h2"]})


def test_user_frontier_missing_input(wide_deep):
    with pytest.raises(ModelError, match=r"tensors \['h2'\] do not form frontier 2: graph input 'x' is read by node 'MatMul_0' after them; add 'x'"):
        _decompose(wide_deep, frontiers={2: ["h2"]})


def test_user_frontier_with_input(wide_deep):
    decomposition = _decompose(wide_deep, frontiers={2: ["x", "h2"]})
    assert _frontiers(decomposition)[2] == ["x", "h2"]
    assert decomposition.blocks[2].ops == {"MatMul": 2, "Relu": 1}


def test_user_frontier_unknown_tensor(chain):
    with pytest.raises(ModelError, match="frontier 1: tensor 'hidden' not found in the graph"):
        _decompose(chain, frontiers={1: ["hidden"]})


def test_user_frontier_shape_tensor(shape_chain):
    with pytest.raises(ModelError, match="frontier 1: tensor 'bu' is a shape tensor that no later node reads as data"):
        _decompose(shape_chain, frontiers={1: ["bu"]})


def test_user_frontier_not_nested(chain):
    with pytest.raises(ModelError, match="frontier 2 is not after frontier 1: node 'MatMul_3' is computed before 1 but after 2"):
        _decompose(chain, frontiers={1: ["h3"], 2: ["h1"]})


def test_user_frontier_out_of_range(chain):
    with pytest.raises(ModelError, match="frontier index 4 is out of range: 0 is the stem frontier, 3 the head frontier"):
        _decompose(chain, frontiers={4: ["h1"]})


def test_user_frontier_unused_tensor(chain):
    with pytest.raises(ModelError, match="frontier 1: tensor 'h1' is not read after the frontier; remove it"):
        _decompose(chain, frontiers={1: ["h1", "h2"]})


def test_unnamed_nodes_rejected():
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
unnamed (float[N, 4] x) => (float[N, 4] y)
<float[4, 4] w = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1}>
{
    y = MatMul(x, w)
}
""")
    with pytest.raises(ModelError, match=r"node 0 \(MatMul\) has no name; run akfc.passes.normalize first"):
        decompose(model)


def test_invalid_levels(chain):
    with pytest.raises(ValueError, match="levels must be at least 1, got 0"):
        _decompose(chain, levels=0)


def test_decomposition_repr(chain):
    text = repr(_decompose(chain))
    assert text.splitlines()[0] == "Decomposition(levels=3, params=192, flops=385, outputs=['y', 'z'])"
    assert "Component(block1, level=1, 3 nodes {MatMul: 1, Add: 1, Relu: 1}, params=40, flops=80" in text


def test_component_lookup(chain):
    decomposition = _decompose(chain)
    assert decomposition.component("block2").level == 2
    with pytest.raises(KeyError, match="no component 'block9'"):
        decomposition.component("block9")
