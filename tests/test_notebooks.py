"""The notebooks in notebooks/ run top to bottom (small sizes: JAXED_NOTEBOOK_SMALL=1) and are stored without outputs.

Executed with nbclient in a fresh kernel, as Colab or Jupyter would; an exception in any cell fails the test.
"""
import json
import re

import pytest

from conftest import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))


def test_the_three_notebooks_are_there():
    assert {"quickstart.ipynb", "hybrid_thickness.ipynb", "optimizers.ipynb"} <= set(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs_and_installs_jaxed_first(name):
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "outputs must be stripped"
    assert "pip" in code[0].source and "install" in code[0].source  # Colab: the first cell installs jaxed
    assert "parameters" in code[1].metadata.get("tags", [])  # papermill-style parameters cell, read from the env
    assert "JAXED_NOTEBOOK_SMALL" in code[1].source
    text = "\n".join(c.source for c in code)
    assert "cuda" not in text.lower() and "jax.devices(" in text  # no device-specific code


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
    """One persistent XLA cache for the notebooks' kernels: at the small size they share compiled programs."""
    return tmp_path_factory.mktemp("xla-cache")


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch, xla_cache):
    monkeypatch.setenv("JAXED_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(xla_cache))
    monkeypatch.setenv("JAXED_NOTEBOOK_OUT", str(tmp_path / "out"))
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, "every notebook shows at least one plot"
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert not re.search(r"\bnan\b", printed.lower()), printed  # no silent NaN in the printed results
    if name == "quickstart.ipynb":
        report = json.loads((tmp_path / "out" / "quickstart" / "report.json").read_text())
        assert report["epochs"] == 3 and 0 < report["wR_all"] < 1
