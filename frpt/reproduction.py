"""Our measured rows (bench/results.json) beside the paper's tables (Wang et al., AAAI 2023, arXiv v3).

The paper's figures come from a ResNet-50 at 224 px trained on two RTX 2080 Ti; ours from ``efficientnet_lite0``
(frozen but in the fine-tuning rows) at 128 or 224 px trained for minutes on a 2-core CPU. A row of ours is put beside the paper
row whose part it plays (same variant), never as the same experiment. The paper's numbers are transcribed from
../shared/research/frpt-paper.md, section 4; every figure of ours comes from results.json.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DPP_VARIANTS
from .errors import FRPTError

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results.json"
# Rows measured on a lent GPU (bench/gpu_session.py): shown too, as their own groups, when the file exists.
RESULTS_GPU = RESULTS.with_name("results_gpu.json")
KS = (1, 2, 4, 8)
TABLES = {  # the paper's tables compared here, with what each shows
    "Table 1": "Ablation, R@1: each part of FRPT added to the frozen backbone, against full fine-tuning.",
    "Table 2": "Comparison with the state of the art, R@1/2/4/8: the FRPT row.",
    "Table 5": "Fixed vs learned prompts on CUB, R@1/2/4/8.",
}
PAPER_SETTING = "ResNet-50, 224 px, trained on two RTX 2080 Ti"
DATASET_NAMES = {"cub": "CUB-200-2011", "cars": "Cars196", "aircraft": "FGVC-Aircraft"}

# Paper Table 1, ablation: learnable parameters, Recall@1 (%) on CUB and Cars; ResNet-50.
TABLE1: dict[str, tuple[str, str, float, float]] = {  # variant: (paper's row, params, CUB, Cars)
    "pt": ("Pre-trained backbone only (PT)", "0 M", 44.9, 58.9),
    "finetune": ("Full fine-tuning", "23.53 M", 69.5, 84.4),
    "dpp+pt": ("DPP + PT", "0.25 M", 55.7, 72.7),
    "pt+cah": ("PT + CAH", "2.62 M", 61.8, 76.9),
    "no-in": ("DPP + PT + CAH without IN", "2.86 M", 72.2, 89.6),
    "frpt": ("DPP + PT + CAH (FRPT)", "2.86 M", 74.3, 91.1),
}
PAPER_R1 = {v: row[2] for v, row in TABLE1.items()}  # CUB R@1 per variant (bench/ablation.py records it)
PAPER_PARAMS = {v: row[1] for v, row in TABLE1.items()}

# Paper Table 2, state of the art: the FRPT row (ResNet-50), Recall@1/2/4/8 (%) per dataset.
TABLE2_FRPT: dict[str, tuple[float, float, float, float]] = {
    "cub": (74.3, 83.7, 89.8, 94.3),
    "cars": (91.1, 95.1, 97.3, 98.6),
    "aircraft": (77.6, 85.7, 91.4, 95.6),
}

# Paper Table 5, fixed vs learned prompts on CUB (ResNet-50), Recall@1/2/4/8 (%).
TABLE5: dict[str, tuple[float, float, float, float]] = {
    "Crop from a CAM-based localisation": (63.7, 74.3, 82.5, 89.7),
    "Crop from the ground-truth box": (67.6, 79.3, 85.8, 91.6),
    "DPP (learned warp)": (74.3, 83.7, 89.8, 94.3),
}


class ResultsError(FRPTError):
    """bench/results.json is missing or cannot be read."""


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper table and which rows of ours play its part."""

    table: str
    method: str
    dataset: str
    recall: tuple[float | None, ...]  # % at K = 1, 2, 4, 8; None where the table does not report it
    params: str | None = None
    variant: str | None = None  # our variant in this row's role; None: we have no counterpart
    presets: tuple[str, ...] = ()  # only our rows of these presets (empty: any preset)
    backbone: str = "ResNet-50"
    note: str = ""


def _table1() -> list[PaperRow]:
    rows = []
    for dataset, column in (("cub", 2), ("cars", 3)):
        for variant, row in TABLE1.items():
            rows.append(PaperRow("Table 1", row[0], dataset, (row[column], None, None, None), row[1], variant))
    return rows


PAPER_ROWS: tuple[PaperRow, ...] = (
    *_table1(),
    *(PaperRow("Table 2", "FRPT", ds, recall, "2.86 M", "frpt") for ds, recall in TABLE2_FRPT.items()),
    PaperRow("Table 5", "DPP (learned warp)", "cub", TABLE5["DPP (learned warp)"], variant="frpt",
             presets=("paper", "official"), note="ours: the published warp (paper / official preset)"),
    PaperRow("Table 5", "Crop from a CAM-based localisation", "cub", TABLE5["Crop from a CAM-based localisation"],
             variant="frpt", presets=("compact",),
             note="ours: a rigid crop placed by a learned saliency (compact preset), not by a CAM"),
    PaperRow("Table 5", "Crop from the ground-truth box", "cub", TABLE5["Crop from the ground-truth box"],
             note="we have no ground-truth-crop row"),
)


@dataclass(frozen=True)
class OurRow:
    """One measured row of results.json, recalls and MAP@R in %."""

    dataset: str
    preset: str
    variant: str
    profile: str
    input_size: int
    backbone: str
    prompt: str  # "-" (no prompt), "crop" (compact), or the DPP setting: published / slow / bounded
    recall: tuple[float, ...]
    map_r: float | None
    learned_params: int | None
    train_seconds: float | None
    command: str
    commit: str
    date: str | None
    machine: str | None
    data_copy: str | None = None  # how the images differ from the dataset as published (e.g. a WebP re-encoding)
    whitening: bool = False  # the compact preset's whitened head (a named departure from Eq. 9)
    epochs: int | None = None  # epochs trained (for the short profile, whose length varies from row to row)
    images_seen: int | None = None  # training images seen, the short profile's epochs may be cut to some batches
    setting: str | None = None  # a probe's named setting (rows of one probe profile differ only by it)

    @property
    def gpu(self) -> str:
        """The NVIDIA GPU the row ran on (e.g. "H100"), "" for a CPU row."""
        found = re.search(r"NVIDIA (\S+)", self.machine or "")
        return found.group(1) if found else ""

    @property
    def where(self) -> str:
        """"" for our usual CPU rows on the default backbone; otherwise the backbone, the GPU and the data copy,
        e.g. "efficientnet_lite1" or "H100, WebP copy"."""
        copy = "WebP copy" if "webp" in (self.data_copy or "").lower() else "data copy" if self.data_copy else ""
        backbone = "" if self.backbone in ("efficientnet_lite0", "?") else self.backbone
        return ", ".join(x for x in (backbone, self.gpu, copy) if x)

    @property
    def group(self) -> str:
        """Rows of one preset trained with one profile (on one kind of machine and data): the unit the page
        filters and colours by."""
        return f"{self.preset} · {self.profile} {self.input_size} px" + (f" · {self.where}" if self.where else "")

    @property
    def label(self) -> str:
        prompt = "" if self.prompt == "-" else f" ({self.prompt} prompt)" if self.prompt == "crop" else \
            f" ({self.prompt} DPP)"
        head = " + whitening" if self.whitening else ""
        return f"{self.preset}/{self.variant}{prompt}{head} · {self.profile} {self.input_size} px{self.length}" + \
            (f" · {self.where}" if self.where else "") + (f" · {self.setting}" if self.setting else "")

    @property
    def length(self) -> str:
        """", 4 epochs (2,560 images)" for a trained row of the short profile, whose length varies; "" otherwise
        (every other profile fixes it)."""
        if self.profile != "short" or not self.epochs:
            return ""
        seen = f" ({self.images_seen:,} images)" if self.images_seen else ""
        return f", {self.epochs} epoch{'s' if self.epochs != 1 else ''}{seen}"


@dataclass(frozen=True)
class Results:
    rows: tuple[OurRow, ...]
    skipped: int  # records without the fields a comparison needs
    raw: bytes  # the file as read, for download


def _our_row(r: dict[str, Any]) -> OurRow:
    variant = str(r["variant"])
    prompt = "-" if variant not in DPP_VARIANTS else "crop" if r["preset"] == "compact" else \
        str(r.get("dpp") or "published")
    pct = lambda x: None if x is None else 100 * float(x)  # noqa: E731
    return OurRow(dataset=str(r["dataset"]), preset=str(r["preset"]), variant=variant, profile=str(r["profile"]),
                  input_size=int(r["input_size"]), backbone=str(r.get("backbone") or "?"), prompt=prompt,
                  recall=tuple(100 * float(r[f"recall@{k}"]) for k in KS), map_r=pct(r.get("map@r")),
                  learned_params=None if r.get("learned_params") is None else int(r["learned_params"]),
                  train_seconds=None if r.get("train_seconds") is None else float(r["train_seconds"]),
                  command=str(r.get("command") or ""), commit=str(r.get("commit") or ""), date=r.get("date"),
                  machine=r.get("machine"), data_copy=r.get("data_copy"), whitening=bool(r.get("whitening")),
                  epochs=None if r.get("epochs") is None else int(r["epochs"]),
                  images_seen=None if r.get("train_images_seen") is None else int(r["train_images_seen"]),
                  setting=None if r.get("setting") is None else str(r["setting"]))


def _read_records(path: Path) -> tuple[bytes, list]:
    """The file's bytes and its list of records, read once."""
    try:
        raw = path.read_bytes()
        records = json.loads(raw)
    except FileNotFoundError:
        raise ResultsError(f"No results file at {path}: run bench/ablation.py to measure rows of ours.") from None
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path} could not be read ({type(exc).__name__}); it may be mid-write, "
                           "reload in a moment.") from None
    if not isinstance(records, list):
        raise ResultsError(f"{path} holds no list of result rows.")
    return raw, records


def load_results(path: str | Path | None = None) -> Results:
    """Our rows from ``path``, or by default bench/results.json plus, where it exists, bench/results_gpu.json.
    A missing, unreadable or malformed file raises :class:`ResultsError` with one sentence; single records that
    lack a needed field are skipped and counted. ``raw`` is the records read, as one JSON list."""
    if path is not None:
        paths = [Path(path)]
    else:
        paths = [RESULTS] + ([RESULTS_GPU] if RESULTS_GPU.is_file() else [])
    files = [_read_records(p) for p in paths]
    records = [r for _, recs in files for r in recs]
    rows, skipped = [], 0
    for r in records:
        try:
            rows.append(_our_row(r))
        except (KeyError, TypeError, ValueError, AttributeError):
            skipped += 1
    raw = files[0][0] if len(files) == 1 else json.dumps(records, indent=1).encode()
    return Results(tuple(rows), skipped, raw)


def our_setting(rows: list[OurRow] | tuple[OurRow, ...]) -> str:
    """Backbones, input sizes and CPU cores of our rows, in words (from the rows themselves, for the page's
    setting sentence): e.g. "efficientnet_lite0 at 128 or 224 px on a 2-core CPU"."""
    backbones = " / ".join(sorted({r.backbone for r in rows}))
    sizes = " or ".join(str(s) for s in sorted({r.input_size for r in rows}))
    cores = sorted({m.group(1) for r in rows if not r.gpu and r.machine and (m := re.search(r"(\d+) CPU", r.machine))},
                   key=int)
    where = f" on a {' or '.join(cores)}-core CPU" if cores else ""
    gpus = sorted({r.gpu for r in rows if r.gpu})
    where += f" (and a few rows on a lent {' / '.join(gpus)})" if gpus else ""
    return f"{backbones} at {sizes} px{where}" if rows else ""


def matches(paper: PaperRow, rows: list[OurRow] | tuple[OurRow, ...]) -> list[OurRow]:
    """Our rows that play ``paper``'s part: same dataset and variant, and one of its presets where it names any."""
    if paper.variant is None:
        return []
    return [r for r in rows if r.dataset == paper.dataset and r.variant == paper.variant
            and (not paper.presets or r.preset in paper.presets)]


def best_per_group(rows: list[OurRow]) -> list[OurRow]:
    """The highest-R@1 row of each preset/profile group (first on ties), in first-seen order."""
    best: dict[str, OurRow] = {}
    for r in rows:
        if r.group not in best or r.recall[0] > best[r.group].recall[0]:
            best[r.group] = r
    return list(best.values())


def _ours(r: OurRow, paper: PaperRow) -> dict[str, Any]:
    return {"ours": r.label, "group": r.group, "preset": r.preset, "variant": r.variant, "profile": r.profile,
            "input px": r.input_size, "backbone": r.backbone, "prompt": r.prompt,
            **{f"ours R@{k}": round(v, 1) for k, v in zip(KS, r.recall)},
            "ours - paper R@1": round(r.recall[0] - paper.recall[0], 1),
            "ours MAP@R": None if r.map_r is None else round(r.map_r, 1), "learned params": r.learned_params,
            "commit": r.commit, "date": r.date or "not recorded", "command": r.command}


# The ours columns, named once by ``_ours`` itself (a blank row beside the first paper row).
OURS_COLUMNS = tuple(_ours(OurRow("", "", "", "", 0, "", "-", (0.0,) * len(KS), None, None, None, "", "", None, None),
                           PAPER_ROWS[0]))


def comparison(rows: list[OurRow] | tuple[OurRow, ...], table: str | None = None, dataset: str | None = None,
               best_only: bool = False) -> list[dict[str, Any]]:
    """Paper rows with ours beside them, one line per (paper row, row of ours); a paper row with no row of ours
    keeps one line whose ours columns are None ("ours" says why). Values in %, rounded to 0.1."""
    out = []
    for paper in PAPER_ROWS:
        if (table and paper.table != table) or (dataset and paper.dataset != dataset):
            continue
        base = {"table": paper.table, "paper row": paper.method, "dataset": paper.dataset,
                "paper backbone": paper.backbone, "paper params": paper.params,
                **{f"paper R@{k}": v for k, v in zip(KS, paper.recall)}}
        mine = matches(paper, rows)
        for r in best_per_group(mine) if best_only else mine:
            out.append({**base, **_ours(r, paper), "note": paper.note})
        if not mine:
            why = "no row of ours" if paper.variant else "no counterpart of ours"
            out.append({**base, **dict.fromkeys(OURS_COLUMNS), "ours": why, "note": paper.note})
    return out


def provenance(rows: list[OurRow] | tuple[OurRow, ...]) -> list[dict[str, Any]]:
    """Every row of ours with the command that made it, its commit, date and machine."""
    return [{"row": r.label, "R@1": round(r.recall[0], 1), "commit": r.commit, "date": r.date or "not recorded",
             "machine": r.machine or "not recorded", "data": r.data_copy or "as published",
             "train s": r.train_seconds, "command": r.command} for r in rows]


def to_csv(lines: list[dict[str, Any]]) -> str:
    """``comparison`` lines as CSV (empty cells for missing values)."""
    if not lines:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(lines[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in line.items()} for line in lines)
    return buf.getvalue()


def reported_ks(lines: list[dict[str, Any]]) -> list[int]:
    """The K of every recall@K the paper reports among ``lines`` (Table 1: R@1 only)."""
    return [k for k in KS if any(line[f"paper R@{k}"] is not None for line in lines)] or [1]


def columns(lines: list[dict[str, Any]]) -> list[str]:
    """The columns worth showing for ``lines``: the recalls the paper reports, params and notes only where any."""
    ks = reported_ks(lines)
    some = lambda key: any(line[key] for line in lines)  # noqa: E731
    return ["paper row", *(["paper params"] if some("paper params") else []), *(f"paper R@{k}" for k in ks), "ours",
            *(f"ours R@{k}" for k in ks), "ours - paper R@1", "ours MAP@R", "learned params", "commit", "date",
            *(["note"] if some("note") else [])]


# One colour per preset/profile group (13 with the GPU rows): plotly's Dark24 without its near-black, which the
# paper's diamonds use.
PALETTE = ("#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#B68100", "#750D86", "#EB663B", "#511CFB",
           "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE", "#862A16", "#A777F1", "#620042",
           "#1616A7", "#DA60CA", "#6C4516", "#0D2A63", "#AF0038")


def figure(lines: list[dict[str, Any]], groups: list[str] | None = None, title: str = ""):
    """Dot plot of ``comparison`` lines: one facet per recall@K the paper reports, one y row per paper row; the
    paper's value as a black diamond, each row of ours as a dot coloured by preset/profile. ``groups`` fixes the
    colour of each group (pass every group on the page so that a group keeps its colour from table to table)."""
    from plotly.subplots import make_subplots

    ks = reported_ks(lines)
    fig = make_subplots(rows=1, cols=len(ks), shared_yaxes=True, subplot_titles=[f"R@{k} (%)" for k in ks],
                        horizontal_spacing=0.03)
    one_dataset = len({line["dataset"] for line in lines}) == 1

    def ylabel(line: dict[str, Any]) -> str:
        return line["paper row"] if one_dataset else f"{line['paper row']} · {line['dataset']}"

    present = list(dict.fromkeys(line["group"] for line in lines if line["group"]))
    order = list(groups or []) + [g for g in present if g not in (groups or [])]
    colour = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(order)}
    for col, k in enumerate(ks, start=1):
        paper = {ylabel(line): line[f"paper R@{k}"] for line in lines if line[f"paper R@{k}"] is not None}
        fig.add_scatter(x=list(paper.values()), y=list(paper), mode="markers", name=f"paper ({PAPER_SETTING})",
                        marker={"symbol": "diamond", "size": 13, "color": "black"}, legendgroup="paper",
                        showlegend=col == 1, row=1, col=col,
                        hovertemplate="paper: %{x:.1f}<extra>%{y}</extra>")
        for group in present:
            mine = [line for line in lines if line["group"] == group]
            fig.add_scatter(x=[line[f"ours R@{k}"] for line in mine], y=[ylabel(line) for line in mine],
                            mode="markers", name=f"ours: {group}", legendgroup=group, showlegend=col == 1,
                            marker={"size": 10, "opacity": 0.8, "color": colour[group]},
                            text=[f"{line['ours']}<br>commit {line['commit']}, {line['date']}" for line in mine],
                            hovertemplate="%{text}<br>%{x:.1f}<extra></extra>", row=1, col=col)
    legend_lines = 1 + len(present) // 3  # about three entries a line below the plot
    fig.update_xaxes(range=[0, 100])
    fig.update_yaxes(autorange="reversed")
    height = 140 + 40 * len({ylabel(line) for line in lines}) + 24 * legend_lines
    fig.update_layout(title=title or None, height=height,
                      margin={"l": 10, "r": 10, "t": 50, "b": 40 + 24 * legend_lines},
                      legend={"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom"})
    return fig


__all__ = ["RESULTS", "KS", "TABLES", "PAPER_SETTING", "DATASET_NAMES", "TABLE1", "PAPER_R1", "PAPER_PARAMS",
           "TABLE2_FRPT", "TABLE5", "ResultsError", "PaperRow", "PAPER_ROWS", "OurRow", "Results", "load_results",
           "our_setting", "matches", "best_per_group", "comparison", "provenance", "to_csv", "reported_ks", "columns",
           "figure"]
