"""Reports: the Markdown table, the JSON shape and the PNG plot."""

from __future__ import annotations

import json

from akfc.report import metrics_table, plot_report, write_json, write_markdown

REPORT = {
    "tasks": {
        "income": {
            "kind": "binary",
            "sources": {"dcn": {"auc": 0.905, "logloss": 0.31}, "mlp": {"auc": 0.901, "logloss": 0.32}},
            "ensemble": {"auc": 0.907, "logloss": 0.305},
            "fused": {"auc": 0.909, "logloss": 0.30},
        },
        "hours": {"kind": "regression", "sources": {"mlp": {"rmse": 0.92, "mae": 0.61}}, "fused": {"rmse": 0.90, "mae": 0.60}},
    },
    "fusion": {
        "levels": [
            {
                "gates": {"income": {"dcn": 0.6, "mlp": 0.4}, "hours": {"mlp": 1.0}},
                "attention": {"income": {"income": 0.7, "hours": 0.3}, "hours": {"income": 0.45, "hours": 0.55}},
            }
        ]
    },
}


def test_metrics_table_rows():
    rows = metrics_table(REPORT)
    assert rows[0] == ["task", "model", "auc", "logloss"]
    assert rows[1:5] == [
        ["income", "dcn", "0.9050", "0.3100"],
        ["income", "mlp", "0.9010", "0.3200"],
        ["income", "ensemble", "0.9070", "0.3050"],
        ["income", "fused", "0.9090", "0.3000"],
    ]
    assert rows[5] == ["task", "model", "rmse", "mae"]


def test_report_files(tmp_path):
    write_json(tmp_path / "report.json", REPORT)
    write_markdown(tmp_path / "report.md", REPORT)
    plot_report(tmp_path / "report.png", REPORT)
    assert json.loads((tmp_path / "report.json").read_text()) == REPORT
    markdown = (tmp_path / "report.md").read_text()
    assert "| income | fused | 0.9090 | 0.3000 |" in markdown
    assert "- income: dcn 0.600, mlp 0.400" in markdown
    assert "| hours | 0.450 | 0.550 |" in markdown
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md", "report.png"]
