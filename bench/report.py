#!/usr/bin/python3
"""bench/report.py RUN_DIR MD_OUT JSON_OUT - the table of one bench run.

Reads RUN_DIR/machine.tsv (key<TAB>value), RUN_DIR/rows.tsv (one figure
row each: figure, measure, value, unit, limit label, limit value, target
text, target spec, note) and RUN_DIR/notes.tsv (figure<TAB>text). Prints the
table for people on stdout and writes it as Markdown and as JSON.

A target spec is "ratio>=X", "value>=X", "value<=X" (several joined with
"&") or empty; it only labels
the row (met / missed). Nothing here fails a run: figures are printed, never
asserted.
"""
import json
import sys


def num(s):
    try:
        return float(s)
    except ValueError:
        return None


def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "/s":
        return f"{v:,.0f}/s"
    if unit == "ms":
        return f"{v:.2f} ms" if v < 10 else f"{v:,.1f} ms"
    if unit == "us":
        return f"{v:,.0f} us"
    if unit == "B":
        return f"{v:,.0f} B ({v / 1024:,.0f} KiB)"
    if unit == "KiB":
        return f"{v:,.0f} KiB ({v / 1024:.1f} MiB)"
    if unit == "s":
        return f"{v:,.2f} s"
    if unit == "wakeups/s":
        return f"{v:.2f}/s"
    if unit == "%":
        return f"{v:.0f}%"
    if unit == "rows":
        return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"
    return f"{v:g} {unit}".strip()


def verdict(spec, value, ratio):
    """"value>=X", "ratio>=X", "value<=X", joined with "&" -> met / MISSED."""
    if not spec:
        return ""
    result = "met"
    for part in spec.split("&"):
        op = ">=" if ">=" in part else "<=" if "<=" in part else None
        if not op:
            continue
        what, bound = part.split(op, 1)
        x = ratio if what.strip() == "ratio" else value
        if x is None:
            return "n/a"
        b = float(bound)
        if not (x >= b if op == ">=" else x <= b):
            result = "MISSED"
    return result


def main():
    run_dir, md_out, json_out = sys.argv[1:4]
    machine = {}
    try:
        with open(f"{run_dir}/machine.tsv", encoding="utf-8") as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition("\t")
                machine[k] = v
    except FileNotFoundError:
        pass
    rows = []
    try:
        with open(f"{run_dir}/rows.tsv", encoding="utf-8") as f:
            for line in f:
                p = line.rstrip("\n").split("\t")
                p += [""] * (9 - len(p))
                fig, measure, value, unit, llabel, lvalue, ttext, tspec, note = p[:9]
                v, lv = num(value), num(lvalue)
                # A ratio says "share of the limit" for rates only.
                ratio = v / lv if v is not None and lv and unit == "/s" else None
                rows.append({
                    "figure": fig, "measure": measure, "value": v, "unit": unit,
                    "limit": llabel or None, "limit_value": lv,
                    "ratio": round(ratio, 4) if ratio is not None else None,
                    "target": ttext or None, "target_spec": tspec or None,
                    "verdict": verdict(tspec, v, ratio) or None, "note": note or None,
                })
    except FileNotFoundError:
        pass
    notes = {}
    try:
        with open(f"{run_dir}/notes.tsv", encoding="utf-8") as f:
            for line in f:
                fig, _, text = line.rstrip("\n").partition("\t")
                notes.setdefault(fig, []).append(text)
    except FileNotFoundError:
        pass

    head = ["figure", "measure", "value", "limit (same run)", "limit value", "ratio", "target", ""]
    table = []
    for r in rows:
        table.append([
            r["figure"], r["measure"], fmt(r["value"], r["unit"]),
            r["limit"] or "-",
            fmt(r["limit_value"], r["unit"]) if r["limit"] else "-",
            f"{r['ratio'] * 100:.0f}%" if r["ratio"] is not None else "-",
            r["target"] or "-", r["verdict"] or "",
        ])

    # For people: aligned columns, then the machine and the notes.
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h)
              for i, h in enumerate(head)]
    out = []
    mline = (f"machine: {machine.get('cpu', '?')}, {machine.get('nproc', '?')} cores, "
             f"{machine.get('mem', '?')}, kernel {machine.get('kernel', '?')}, "
             f"run dir on {machine.get('fs', '?')}")
    out.append(mline)
    out.append("versions: " + ", ".join(
        f"{k} {machine[k]}" for k in ("gcc", "mosquitto", "sqlite", "libcurl", "nghttp2", "h2load")
        if k in machine))
    out.append(f"tree: {machine.get('tree', '?')}  mode: {machine.get('mode', '?')}  "
               f"started: {machine.get('started', '?')}  load before: {machine.get('loadavg', '?')}")
    labels = {"hub_conf": "hub settings beyond the defaults",
              "agent_conf": "agent settings beyond the defaults"}
    for k, label in labels.items():
        if k in machine:
            out.append(f"{label}: {machine[k]}")
    if "interrupted" in machine:
        out.append(f"INTERRUPTED: {machine['interrupted']}")
    out.append("")
    out.append("  ".join(h.ljust(widths[i]) for i, h in enumerate(head)).rstrip())
    out.append("  ".join("-" * w for w in widths))
    for t in table:
        out.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(t)).rstrip())
    for fig in dict.fromkeys(r["figure"] for r in rows):
        if fig in notes:
            out.append("")
            out.append(f"{fig}:")
            out.extend(f"  - {n}" for n in notes[fig])
    print("\n".join(out))

    def md_cell(s):
        return s.replace("|", "\\|")

    md = ["# Tidings bench run", ""]
    md.append(f"- machine: {machine.get('cpu', '?')}, {machine.get('nproc', '?')} cores, "
              f"{machine.get('mem', '?')}, kernel {machine.get('kernel', '?')}, "
              f"run dir on {machine.get('fs', '?')}")
    md.append("- versions: " + ", ".join(
        f"{k} {machine[k]}" for k in ("gcc", "mosquitto", "sqlite", "libcurl", "nghttp2", "h2load")
        if k in machine))
    md.append(f"- tree: `{machine.get('tree', '?')}`, build {machine.get('build', '?')}, "
              f"mode {machine.get('mode', '?')}, started {machine.get('started', '?')}, "
              f"load average before: {machine.get('loadavg', '?')}")
    md.append(f"- command: `{machine.get('command', '?')}`")
    for k, label in labels.items():
        if k in machine:
            md.append(f"- {label}: `{machine[k]}`")
    if "interrupted" in machine:
        md.append(f"- **interrupted**: {machine['interrupted']}")
    md.append("")
    md.append("| " + " | ".join(head[:-1]) + " | vs target |")
    md.append("|" + "---|" * len(head))
    for t in table:
        md.append("| " + " | ".join(md_cell(c) for c in t) + " |")
    for fig in dict.fromkeys(r["figure"] for r in rows):
        if fig in notes:
            md.append("")
            md.append(f"**{fig}**")
            md.append("")
            md.extend(f"- {md_cell(n)}" for n in notes[fig])
    with open(md_out, "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    with open(json_out, "w", encoding="utf-8") as f:
        json.dump({"machine": machine, "rows": rows, "notes": notes}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
