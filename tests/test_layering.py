"""Imports point one way: the import-linter contracts in pyproject.toml, kept.

api → integration → lifecycle → patching → run → ledger → writer → stores →
source/uris/validation → config; inside the spool, remote and sync_support → sender →
spool_file → rows; integrations never import the user-facing API, the writer or a store;
the core never imports an integration; stores know no framework.
"""

from pathlib import Path

from importlinter.cli import lint_imports

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_every_import_contract_is_kept(capsys):
    status = lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert status == 0, report
    assert "0 broken" in report and "KEPT" in report
