"""The model tables of README.md and docs/models.md are rendered from MODEL_FILES (tools/model_table.py): one
source of the model-file text, each model's licence included."""
import importlib.util
import sys

from conftest import PACK_ROOT


def _tool():
    spec = importlib.util.spec_from_file_location("dpir_model_table", PACK_ROOT / "tools" / "model_table.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("dpir_model_table", mod)
    spec.loader.exec_module(mod)
    return mod


def test_readme_and_docs_tables_are_rendered_from_model_files():
    tool = _tool()
    readme, doc = (PACK_ROOT / "README.md").read_text(), (PACK_ROOT / "docs" / "models.md").read_text()
    assert tool.readme_block(readme) == tool.block(full=False), "run: python tools/model_table.py --write"
    assert tool.readme_block(doc, full=True) == tool.block(full=True), "run: python tools/model_table.py --write"


def test_every_kind_has_a_row_with_its_fields():
    tool = _tool()
    files = tool.load_model_files()
    table, short = tool.render(files), tool.render(files, full=False)
    for f in files.values():
        row = next(line for line in table.splitlines() if f["expected"].replace("|", "\\|") in line)
        assert f["source"] in row and f"`ComfyUI/models/{f['folder']}/`" in row and f["what"] in row
        assert f["licence"] and row.endswith(f"| {f['licence']} |")
        assert sum(f"| {f['what']} | {f['licence']} |" in line for line in short.splitlines()) == 1
    assert "folder_paths" not in sys.modules or hasattr(sys.modules["folder_paths"], "__file__")  # no stand-in left
