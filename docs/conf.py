"""Sphinx configuration of samx's documentation site.

Build it with ``pip install -e ".[docs]"`` and ``sphinx-build -W -b html docs docs/_build/html``
(CI does, with warnings as errors). The API reference is generated from the docstrings
(autodoc, autosummary, napoleon for their Google-style sections); the guides are MyST Markdown;
the notebooks are rendered by myst-nb from their stored outputs, never executed here; the
benchmarks page is ``benchmarks/README.md`` itself.
"""

import pathlib
import shutil
import warnings

import samx

# sphinx-autodoc-typehints calls an API that Sphinx 10 removes; not ours to fix.
warnings.filterwarnings("ignore", message=".*set_application.*")

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
GENERATED = DOCS / "_generated"

project = "samx"
author = "The samx authors"
copyright = "The samx authors"
release = samx.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
    "sphinx_copybutton",
    "myst_nb",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
root_doc = "index"
templates_path = ["_templates"]

# The API reference: one page per public name, from the docstrings.
autosummary_generate = True
autosummary_ignore_module_all = False
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
typehints_defaults = "comma"
always_document_param_types = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# A NamedTuple's "Attributes:" become fields of its page, not a second entry per attribute.
napoleon_use_ivar = True

# A reference to a samx name that does not exist fails the build (-W). The libraries samx
# builds on have no inventory reachable offline, so their names render as code.
nitpicky = True
EXTERNAL = r"(jax|jaxlib|jnp|np|numpy|optax|flax|nnx|chex|orbax|ocp|matplotlib|tqdm)(\..*)?"
nitpick_ignore_regex = [
    (r"py:.*", EXTERNAL),
    (r"py:.*", r"(typing|collections\.abc|os|pathlib|enum|dataclasses|concurrent)\..*"),
    (r"py:.*", r"(int|float|bool|str|bytes|object|tuple|list|dict|set|type|None|Ellipsis)"),
    (r"py:.*", r"(Any|Callable|Sequence|Mapping|Iterator|Iterable|Literal|TypeVar|Self)"),
    (r"py:.*", r"(Array|ArrayLike|PyTree|Params|Updates|OptState|Schedule|ScalarOrSchedule)"),
    (r"py:.*", r"(DType|DTypeLike|Shape|PRNGKey|Mesh|NamedSharding|PartitionSpec|PathLike)"),
    (r"py:.*", r"(GradientTransformation|GradientTransformationExtraArgs|Module|Rngs|State)"),
    (r"py:.*", r"(ValueError|TypeError|RuntimeError|KeyError|OSError|Warning|UserWarning)"),
    (r"py:.*", r"(NamedTuple|Exception|KeyboardInterrupt|SystemExit|Protocol|Path)"),
    (r"py:.*", r"(_[A-Za-z_]+|.*\._[A-Za-z_]+.*)"),  # private helpers named in signatures
    # Type variables and the engine's internal aliases, named in signatures.
    (r"py:.*", r"(.*\.)?(T|ModuleT|Steps|Build|Transform|TrainStep|Evaluator)"),
]

# MyST: $...$ and $$...$$ math, ::: fences, heading anchors for [text](page.md#heading).
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
# The notebooks are shown as stored: their outputs come from a real run (CI executes them).
nb_execution_mode = "off"

html_theme = "sphinx_book_theme"
html_title = f"samx {release}"
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "use_download_button": True,
}
html_static_path: list[str] = []
copybutton_prompt_text = r"\$ |>>> |\.\.\. "
copybutton_prompt_is_regexp = True


def copy_sources_from_the_repository() -> None:
  """Copy the notebooks into the source tree (Sphinx reads only files under docs/)."""
  notebooks = GENERATED / "notebooks"
  if notebooks.exists():
    shutil.rmtree(notebooks)
  notebooks.mkdir(parents=True)
  for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
    shutil.copy2(notebook, notebooks / notebook.name)


copy_sources_from_the_repository()
