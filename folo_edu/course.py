"""The course map: which milestone builds what, in which notebook, and whether it exists.

This list is the one source of truth for the course map. The tables in README.md and
docs/learn/00_overview.md are generated from it, notebook 00 displays it, and
tests/unit/test_course_map.py checks that all of them agree with the notebooks that exist
in notebooks/. When a milestone's notebook lands: set its ``status`` to "built" here,
then run ``python -m folo_edu.course --write`` to rewrite the two tables.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

BUILT, PLANNED = "built", "planned"
ROOT = Path(__file__).resolve().parents[1]  # the repository, for an editable install


@dataclass(frozen=True)
class Milestone:
    name: str  # "M0"
    notebooks: tuple[str, ...]  # notebook file names without .ipynb, in notebooks/
    builds: str  # what the learner builds, one line
    package: str  # where it lives in folo_edu/
    status: str  # BUILT (its notebooks exist) or PLANNED
    docs: tuple[str, ...] = ()  # pages under docs/ (learn: concepts, dev: build notes)
    note: str = ""  # a caveat shown next to the status

    def status_text(self) -> str:
        return f"{self.status} ({self.note})" if self.note else self.status


MILESTONES: tuple[Milestone, ...] = (
    Milestone("M0", ("01_config_and_requests",),
              "configs, `SamplingParams`, the `Request` status machine, model sources, "
              "memory arithmetic",
              "`config.py`, `sampling_params.py`, `request.py`, `outputs.py`, `models/loader.py`",
              BUILT, ("learn/01_config_and_requests.md", "dev/milestone_0.md")),
    Milestone("M1", ("00_quickstart", "02_sampling", "03_forward_pass_and_kv_cache"),
              "the sampler, the Llama/Qwen decoder, naive and SDPA attention, the KV cache, `LLM`",
              "`sample/`, `models/`, `attention/` naive + SDPA, `kv_cache/`, `engine/`",
              BUILT, ("learn/00_overview.md", "learn/02_sampling.md",
                      "learn/03_forward_pass_and_kv_cache.md", "dev/milestone_1.md")),
    Milestone("M2", ("04_continuous_batching",),
              "a scheduler with a token budget: requests join and leave the batch every step",
              "`engine/scheduler.py`, `engine/model_runner.py`",
              BUILT, ("learn/04_continuous_batching.md", "dev/milestone_2.md"),
              note="3x static batches met with the CPU kernels (3.12x), 10x one at a time "
                   "not (6.67x): docs/dev/milestone_2.md, docs/dev/cpu_speed.md"),
    Milestone("M3", ("05_paged_kv_cache",),
              "the block pool, the KV cache manager, paged attention, preemption",
              "`kv_cache/` block pool and manager, `attention/` paged",
              BUILT, ("learn/05_paged_kv_cache.md", "dev/milestone_3.md")),
    Milestone("M4", ("06_cuda_forward_pass",),
              "attention backends (paged-torch, flex, Triton and CPU Numba kernels), "
              "CUDA graphs, torch.compile",
              "`attention/` backends and Triton kernels, `scripts/gpu_check.sh`",
              BUILT, ("learn/06_cuda_forward_pass.md", "dev/milestone_4.md"),
              note="GPU matrix not yet run on a GPU: docs/dev/milestone_4.md"),
    Milestone("M5", ("07_chunked_prefill",),
              "chunked prefill: long prompts split across steps, sharing the token budget",
              "`engine/scheduler.py` token rule, `bench/latency.py`",
              BUILT, ("learn/07_chunked_prefill.md", "dev/milestone_5.md"),
              note="ITL goal (p99 <= 1.5x p50) not met on 2 shared CPU cores: "
                   "docs/dev/milestone_5.md"),
    Milestone("M6", ("08_prefix_caching",),
              "prefix caching: requests that share a prefix share its KV blocks",
              "`kv_cache/` prefix hashing and LRU block pool, `bench/prefix.py`",
              BUILT, ("learn/08_prefix_caching.md", "dev/milestone_6.md"),
              note="goals met on a quiet CPU after blocks were cached at allocation: "
                   "docs/dev/milestone_6.md"),
    Milestone("M7", ("09_gptq_quantization",),
              "4-bit GPTQ weights",
              "`quantization/`, `folo-edu quantize`",
              BUILT, ("learn/09_gptq_quantization.md", "dev/milestone_7.md"),
              note="perplexity goal (1.15x fp32) not met on a model that is itself a "
                   "dequantized Q4_1, Triton kernel never run on a GPU: "
                   "docs/dev/milestone_7.md"),
    Milestone("serving", ("10_serving",),
              "`folo-edu serve`: an OpenAI-compatible server, latency against load",
              "`entrypoints/`, `bench/serving.py`",
              BUILT, ("learn/10_serving.md", "dev/serving.md"),
              note="measured on 2 shared CPU cores under load: docs/dev/serving.md"),
)


def milestone_of(notebook: str) -> Milestone | None:
    """The milestone whose notebooks include ``notebook`` (a name, with or without .ipynb)."""
    stem = notebook.removesuffix(".ipynb")
    return next((m for m in MILESTONES if stem in m.notebooks), None)


def built_notebooks() -> list[str]:
    """The notebooks of the built milestones, sorted by file name."""
    return sorted(nb for m in MILESTONES if m.status == BUILT for nb in m.notebooks)


# ---- the tables ----------------------------------------------------------------------
_COLUMNS = {
    "milestone": lambda m: m.name,
    "notebook": lambda m: ", ".join(f"`{nb}`" for nb in m.notebooks),
    "what it builds": lambda m: m.builds,
    "package": lambda m: m.package,
    "status": Milestone.status_text,
}
README_COLUMNS = ("milestone", "notebook", "what it builds", "status")
OVERVIEW_COLUMNS = ("milestone", "notebook", "package", "status")


def markdown_table(columns=README_COLUMNS) -> str:
    """The course map as a Markdown table with the given columns."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for m in MILESTONES:
        lines.append("| " + " | ".join(_COLUMNS[c](m) for c in columns) + " |")
    return "\n".join(lines)


def text_table() -> str:
    """The course map as plain text, one milestone per line."""
    width = max(len(", ".join(m.notebooks)) for m in MILESTONES)
    return "\n".join(f"{m.name:8} {', '.join(m.notebooks):{width}}  {m.status_text()}"
                     for m in MILESTONES)


class CourseMap:
    """What notebook 00 displays: a Markdown table in Jupyter, plain text elsewhere."""

    def _repr_markdown_(self) -> str:
        return markdown_table(README_COLUMNS)

    def __repr__(self) -> str:
        return text_table()


def course_map() -> CourseMap:
    return CourseMap()


# ---- the generated blocks in README.md and docs/learn/00_overview.md ------------------
BEGIN = "<!-- course map: generated from folo_edu/course.py by `python -m folo_edu.course --write` -->"
END = "<!-- end of course map -->"
GENERATED = {"README.md": README_COLUMNS, "docs/learn/00_overview.md": OVERVIEW_COLUMNS}


def generated_block(columns) -> str:
    return f"{BEGIN}\n{markdown_table(columns)}\n{END}"


def current_block(text: str) -> str | None:
    """The generated block in a file's text, or None when it has none."""
    found = re.search(re.escape(BEGIN) + r".*?" + re.escape(END), text, re.S)
    return found.group(0) if found else None


def stale_files(root: Path = ROOT) -> list[str]:
    """The files whose course map differs from MILESTONES (or that have none)."""
    return [name for name, columns in GENERATED.items()
            if current_block((root / name).read_text()) != generated_block(columns)]


def write(root: Path = ROOT) -> list[str]:
    """Rewrite the generated block of every file that is stale; return their names."""
    written = []
    for name in stale_files(root):
        path = root / name
        text = path.read_text()
        block = current_block(text)
        if block is None:
            raise SystemExit(f"{path}: no course-map block; add the lines\n{BEGIN}\n{END}")
        path.write_text(text.replace(block, generated_block(GENERATED[name])))
        written.append(name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the course map, or update the "
                                     "generated tables in README.md and the overview.")
    parser.add_argument("--write", action="store_true", help="rewrite stale tables")
    parser.add_argument("--check", action="store_true", help="exit 1 if a table is stale")
    args = parser.parse_args(argv)
    if args.write:
        print("\n".join(f"rewrote {n}" for n in write()) or "up to date")
    elif args.check:
        stale = stale_files()
        print("\n".join(f"stale: {n}" for n in stale) or "up to date")
        return 1 if stale else 0
    else:
        print(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
