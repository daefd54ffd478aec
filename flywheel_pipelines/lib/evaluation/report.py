"""The evaluation report: summary JSON, Markdown, self-contained HTML and PNG plots.

Everything here is a pure function of the comparison and the evaluation's identity (policy,
suite, seed, golden set, production version): no clocks, no run ids, no hostnames. The same
policy, suite, seeds and library versions therefore produce byte-identical files (PNGs are
written with fixed metadata), which a test checks.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
from collections.abc import Mapping, Sequence

from flywheel_pipelines.lib import layout, markdown
from flywheel_pipelines.lib.evaluation.compare import ALL, CANDIDATE, PRODUCTION, Comparison, GroupSummary
from flywheel_pipelines.lib.sim.scenario import EpisodeResult

SCHEMA = "flywheel-eval-v2"
SUMMARY = layout.EVAL_SUMMARY
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
SUCCESS_PLOT = "success_by_group.png"
RETURN_PLOT = "returns.png"
RESULTS = layout.EVAL_RESULTS
PLOT_TITLES = {SUCCESS_PLOT: "success by group", RETURN_PLOT: "return distributions"}
COLORS = {CANDIDATE: "#2b6cb0", PRODUCTION: "#dd6b20", "scripted_expert": "#38a169", "hold_position": "#a0aec0"}
METHOD = ("Success rates carry 95% Wilson score intervals. Candidate - production is paired on the same "
          "scenarios and seeds: the success difference uses Newcombe's hybrid score interval for paired "
          "proportions (method 10, 1998); return, time-to-goal and jerk differences use a percentile bootstrap "
          "of the mean paired difference ({resamples} resamples of scenarios, seed {seed}).")


def summary_document(comparison: Comparison, *, identity: Mapping) -> dict:
    """The machine-readable report (summary.json). ``identity``: policy, suite, golden set,
    production and seed, as the caller knows them (JSON-serializable, deterministic)."""
    c = comparison
    return {
        "schema": SCHEMA,
        **identity,
        "policies": list(c.policies),
        "groups": list(c.groups),
        # Kept from the first report format: one overall summary per policy, candidate first.
        "summaries": [c.summaries[ALL][p].to_dict() for p in c.policies],
        "by_group": {g: [c.summaries[g][p].to_dict() for p in c.policies] for g in c.groups},
        "comparison": None if c.paired is None else {g: c.paired[g].to_dict() for g in c.groups},
        "golden_scenarios": [g.to_dict() for g in c.golden],
        "gate": c.verdict.to_dict(),
    }


def summary_json(doc: Mapping) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n"


def _rate(s: GroupSummary) -> str:
    return f"{s.successes}/{s.episodes} ({s.success_rate:.1%}) [{s.ci_low:.1%} – {s.ci_high:.1%}]"


def _opt(x: float | None, spec: str, unit: str = "") -> str:
    return "n/a" if x is None else format(x, spec) + unit


def _iv(iv: Mapping | None, spec: str, scale: float = 1.0, unit: str = "") -> str:
    if iv is None:
        return "n/a"
    return (f"{format(iv['estimate'] * scale, spec)}{unit} "
            f"[{format(iv['low'] * scale, spec)}, {format(iv['high'] * scale, spec)}]")


def _production_line(doc: Mapping) -> str:
    prod = doc.get("production")
    if not prod:
        return ("**No production policy yet** (no `{alias}` alias on registered model `{model}`): this is a first "
                "release, gated on absolute criteria only.").format(alias=doc["suite"]["production_alias"],
                                                                    model=doc.get("registered_model") or "?")
    return (f"Compared with **production**: registered model `{prod['registered_model']}` version "
            f"{prod['registered_version']} (alias `{prod['alias']}`, policy `{prod.get('policy_version') or '?'}`), "
            "on the same scenarios and seeds.")


def _tables(doc: Mapping) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(anchor, title, header, rows) of every report table, shared by Markdown and HTML."""
    policies, groups = doc["policies"], doc["groups"]
    by = {g: {s["policy"]: GroupSummary(**s) for s in doc["by_group"][g]} for g in groups}
    out = [("gate", "Gate criteria", ["criterion", "kind", "result", "detail"],
            [[c["name"], c["kind"], "PASS" if c["passed"] else "FAIL", c["detail"]] for c in doc["gate"]["criteria"]])]
    out.append(("success", "Success by scenario group (95% Wilson CI)", ["group", *policies],
                [[g, *(_rate(by[g][p]) for p in policies)] for g in groups]))
    if doc["comparison"] is not None:
        rows = []
        for g in groups:
            c = doc["comparison"][g]
            rows.append([g, str(c["scenarios"]), f"{c['candidate_only']} / {c['production_only']}",
                         _iv(c["success_diff"], "+.1f", 100, " pp"), _iv(c["return_diff"], "+.2f"),
                         _iv(c["time_to_goal_diff"], "+.2f", 1, " s"), _iv(c["jerk_diff"], "+.1f"),
                         _iv(c["safety_diff"], "+.1f", 100, " pp")])
        out.append(("paired", "Candidate - production, paired on the same scenarios",
                    ["group", "scenarios", "won / lost", "success diff", "return diff", "time-to-goal diff",
                     "jerk RMS diff", "safety-episode diff"], rows))
    rows = [[g, p, f"{s.mean_return:.2f}", _opt(s.mean_time_to_goal_s, ".2f", " s"), f"{s.mean_final_error_m * 100:.1f} cm",
             f"{s.mean_jerk_rms:.1f}", str(s.joint_limit_hits), str(s.force_events),
             f"{s.safety_episodes} ({s.safety_event_rate:.1%})"]
            for g in groups for p in policies for s in [by[g][p]]]
    out.append(("metrics", "Return, time to goal, smoothness and safety",
                ["group", "policy", "mean return", "mean time to goal", "mean final error", "jerk RMS (rad/s³)",
                 "joint-limit steps", "force steps", "episodes with safety events"], rows))
    golden = doc["golden_scenarios"]
    if golden:
        has_prod = doc["comparison"] is not None
        order = {"regression": 0, "fails": 1, "still failing": 2, "fixed": 3, "passes": 4}
        rows = [[g["scenario_id"], g["robot"], g["date"], g["field_outcome"],
                 ("pass" if g["production"] else "fail") if has_prod else "-", "pass" if g["candidate"] else "fail",
                 g["status"]]
                for g in sorted(golden, key=lambda g: (order.get(g["status"], 9), g["scenario_id"]))]
        out.append(("golden", f"Golden regression scenarios ({len(golden)}, from field failures and interventions)",
                    ["scenario", "robot", "day", "in the field", "production", "candidate", "status"], rows))
    return out


def _headline(doc: Mapping) -> list[str]:
    gate = doc["gate"]
    failed = [c for c in gate["criteria"] if not c["passed"]]
    lines = [f"**Gate: {'PASSED' if gate['passed'] else 'FAILED'}**"
             + (" — the candidate may be released." if gate["passed"] else " — the candidate must not be released:")]
    lines += [f"- {c['name']}: {c['detail']}" for c in failed]
    return lines


def _identity_lines(doc: Mapping) -> list[str]:
    suite, golden = doc["suite"], doc.get("golden") or {}
    counts = ", ".join(f"{n} {g}" for g, n in doc["scenario_counts"].items())
    return [
        f"Suite `{suite['name']}` version `{suite['version']}` (seed {doc['seed']}): {counts} scenarios"
        + (f"; golden set `{golden['version']}`" if golden.get("version") else "") + ".",
        _production_line(doc),
    ]


def report_markdown(doc: Mapping) -> str:
    title = f"# Evaluation of `{doc['policy_name']}` policy `{doc['policy_version']}`"
    if doc.get("registered_version"):
        title += f" (registered version {doc['registered_version']})"
    lines = [title, "", *_headline(doc), "", *_identity_lines(doc), ""]
    for _anchor, heading, header, rows in _tables(doc):
        lines += [f"## {heading}", "", markdown.table(header, rows), ""]
    lines += ["## Plots", "", f"![success by group]({SUCCESS_PLOT})", "", f"![return distributions]({RETURN_PLOT})", "",
              "## Method", "", METHOD.format(resamples=doc["suite"]["statistics"]["bootstrap_resamples"],
                                             seed=doc["suite"]["statistics"]["bootstrap_seed"]), ""]
    return "\n".join(lines)


def _inline_md(text: str) -> str:
    """HTML of one Markdown line (escaped; `code` and **bold** only)."""
    out, parts = [], html.escape(text).split("`")
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{part}</code>")
        else:
            bold = part.split("**")
            out.append("".join(f"<strong>{b}</strong>" if j % 2 else b for j, b in enumerate(bold)))
    return "".join(out)


_MARKED = {"PASS": "pass", "pass": "pass", "FAIL": "fail", "fail": "fail", "regression": "fail"}


def _cell(value: object) -> str:
    mark = _MARKED.get(str(value))
    return (f'<td class="{mark}">' if mark else "<td>") + html.escape(str(value)) + "</td>"


def report_html(doc: Mapping, plots: Mapping[str, bytes]) -> str:
    """One self-contained page (plots inlined as data URIs): opens the same in a browser, in the
    MLflow artifact viewer and from the lake."""
    passed = doc["gate"]["passed"]
    head, *failed = _headline(doc)
    body = [f"<h1>{_inline_md(report_markdown(doc).splitlines()[0][2:])}</h1>",
            f'<div class="verdict {"pass" if passed else "fail"}"><p>{_inline_md(head)}</p>'
            + (f"<ul>{''.join(f'<li>{_inline_md(x[2:])}</li>' for x in failed)}</ul>" if failed else "") + "</div>"]
    body += [f"<p>{_inline_md(line)}</p>" for line in _identity_lines(doc)]
    for anchor, heading, header, rows in _tables(doc):
        cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        trs = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
        body.append(f'<h2 id="{anchor}">{html.escape(heading)}</h2><table><thead><tr>{cells}</tr></thead>'
                    f"<tbody>{trs}</tbody></table>")
    body.append("<h2>Plots</h2>")
    for name, alt in PLOT_TITLES.items():
        if name in plots:
            data = base64.b64encode(plots[name]).decode()
            body.append(f'<p><img alt="{alt}" src="data:image/png;base64,{data}"></p>')
    body.append("<h2>Method</h2><p>" + html.escape(METHOD.format(
        resamples=doc["suite"]["statistics"]["bootstrap_resamples"],
        seed=doc["suite"]["statistics"]["bootstrap_seed"])) + "</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#1a202c}"
             "table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #cbd5e0;padding:4px 8px}"
             "th{background:#edf2f7}.verdict{padding:.5em 1em;border-radius:6px}.verdict.pass{background:#c6f6d5}"
             ".verdict.fail{background:#fed7d7}td.fail{color:#c53030;font-weight:bold}"
             "td.pass{color:#2f855a}img{max-width:100%}")
    title = html.escape(f"Evaluation {doc['policy_name']} {doc['policy_version']}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # No Software/date chunks: the bytes depend only on what is drawn.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def success_plot_png(doc: Mapping) -> bytes:
    """Success rate with 95% Wilson intervals per scenario group, every policy side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies, groups = doc["policies"], doc["groups"]
    by = {g: {s["policy"]: s for s in doc["by_group"][g]} for g in groups}
    with plt.style.context("default"):
        fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
        width = 0.8 / len(policies)
        for i, p in enumerate(policies):
            xs = [j + (i - (len(policies) - 1) / 2) * width for j in range(len(groups))]
            rates = [by[g][p]["success_rate"] for g in groups]
            err = [[by[g][p]["success_rate"] - by[g][p]["ci_low"] for g in groups],
                   [by[g][p]["ci_high"] - by[g][p]["success_rate"] for g in groups]]
            ax.bar(xs, rates, width * 0.95, yerr=err, capsize=3, label=p, color=COLORS.get(p, "#718096"))
        ax.set_xticks(range(len(groups)), [f"{g}\n(n={by[g][CANDIDATE]['episodes']})" for g in groups])
        ax.set_ylim(0, 1.22)
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_ylabel("success rate (95% Wilson CI)")
        ax.set_title("Success by scenario group")
        ax.legend(loc="upper center", fontsize=8, ncols=len(policies), frameon=False)
        fig.tight_layout()
        png = _png(fig)
        plt.close(fig)
    return png


def return_plot_png(results: Mapping[str, Sequence[EpisodeResult]], groups: Sequence[str]) -> bytes:
    """Distribution of episode returns per group, candidate beside production and the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(results)
    shown = [g for g in groups if g != ALL]
    with plt.style.context("default"):
        fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.4), dpi=100, squeeze=False)
        for ax, g in zip(axes[0], shown, strict=True):
            data = [[r.return_ for r in results[p] if r.group == g] for p in policies]
            box = ax.boxplot(data, patch_artist=True, widths=0.6)
            for patch, p in zip(box["boxes"], policies, strict=True):
                patch.set_facecolor(COLORS.get(p, "#718096"))
            ax.set_xticks(range(1, len(policies) + 1), [p.replace("_", "\n") for p in policies], fontsize=7)
            ax.set_title(f"{g} (n={len(data[0])})")
        axes[0][0].set_ylabel("episode return")
        fig.suptitle("Return distributions")
        fig.tight_layout()
        png = _png(fig)
        plt.close(fig)
    return png


# The Dagster UI shows the plots from the materialization's metadata, inlined as data: URIs. A
# palette of 64 colours keeps the flat-coloured charts as they look at a third of the bytes
# (~9 and ~12 KB instead of 27 and 41 KB): the metadata row stays small in the event log.
UI_PLOT_COLORS = 64
UI_PLOT_MAX_WIDTH = 960  # px; wider plots are scaled down to fit the UI's Markdown dialog


def compact_png(png: bytes, *, colors: int = UI_PLOT_COLORS, max_width: int = UI_PLOT_MAX_WIDTH) -> bytes:
    """A small copy of a plot for carrying inline: at most ``max_width`` pixels wide, ``colors``
    palette colours, no text chunks (deterministic, like the plot itself)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as src:
        img = src.convert("RGB")
    if img.width > max_width:
        img = img.resize((max_width, round(img.height * max_width / img.width)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.quantize(colors=colors).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def plots_markdown(files: Mapping[str, bytes]) -> str:
    """The report's plots as Markdown images with the compact PNGs inlined as data: URIs, for
    places that cannot reach the lake (the Dagster UI renders these; a link to a lake file it
    cannot open). Plots missing from ``files`` are left out."""
    parts = []
    for name, title in PLOT_TITLES.items():
        if name in files:
            data = base64.b64encode(compact_png(files[name])).decode()
            parts.append(f"**{title.capitalize()}** (`{name}`)\n\n![{title}](data:image/png;base64,{data})")
    return "\n\n".join(parts)


def render(comparison: Comparison, results: Mapping[str, Sequence[EpisodeResult]], *,
           identity: Mapping) -> dict[str, bytes]:
    """Every report file by name: summary.json, report.md, report.html and the PNGs."""
    doc = summary_document(comparison, identity=identity)
    plots = {SUCCESS_PLOT: success_plot_png(doc), RETURN_PLOT: return_plot_png(results, comparison.groups)}
    return {SUMMARY: summary_json(doc).encode(), REPORT_MD: report_markdown(doc).encode(),
            REPORT_HTML: report_html(doc, plots).encode(), **plots}


class SummaryChanged(RuntimeError):
    """The evaluation summary in the lake is not the one its evaluation recorded."""


def read_summary(store, prefix: str, sha256: str | None) -> dict:
    """An evaluation's summary.json under ``prefix``, checked against the hash its evaluation recorded.

    Shared by the release gate and the release bundle, which must judge the very summary the
    evaluation wrote.

    Raises:
        SummaryChanged: the summary in the lake changed since (naming where it is).
    """
    data = store.read_bytes(f"{prefix}/{SUMMARY}")
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise SummaryChanged(f"{store.uri(prefix)}/{SUMMARY} is not the summary eval_report recorded "
                             "(changed since): re-materialize eval_report")
    return json.loads(data)
