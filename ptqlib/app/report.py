"""The pipeline's and the benchmark's results as text: the machine line and Markdown tables.

``python -m ptqlib pipeline`` writes ``results.md`` with :func:`results_markdown`;
``python -m ptqlib bench`` prints :func:`machine_line` and :func:`latency_markdown`.
"""

from __future__ import annotations

MODEL_TITLES = {"cnn": "SmallCNN, notebook 07", "dwcnn": "DepthwiseCNN, notebook 09"}


def machine_line(machine: dict) -> str:
    return (
        f"Machine: {machine['cpu']} ({machine['cpu_capability']}; int8 dot-product "
        f"instructions: {machine['int8_instructions']}), {machine['threads']} threads, "
        f"torch {machine['torch']}, quantized engine {machine['quantized_engine']}."
    )


def latency_markdown(rows: dict[str, dict[str, dict]]) -> list[str]:
    """Markdown rows of median latency (ms) and speed relative to FP32, one row per model;
    ``rows`` as made by :func:`latency_rows`."""
    batch_sizes = list(rows["fp32"])
    lines = [
        "| model |" + "".join(f" batch {size}: ms (IQR) | vs FP32 |" for size in batch_sizes),
        "|---" * (1 + 2 * len(batch_sizes)) + "|",
    ]
    for name in rows:  # every model measured, in the order measured
        cells = [name]
        for size in batch_sizes:
            row = rows[name][size]
            speedup = rows["fp32"][size]["median_ms"] / row["median_ms"]
            cells += [
                f"{row['median_ms']:.3f} ({row['q1_ms']:.3f}-{row['q3_ms']:.3f})",
                "(reference)" if name == "fp32" else f"{speedup:.2f}x",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def results_markdown(results: dict) -> str:
    """The results as Markdown tables, with the data and machine they were measured on."""
    setup = results["setup"]
    fp32_size = results["fp32"]["size_bytes"]
    model = setup.get("model", "simplenet")
    lines = [
        ("" if model == "simplenet" else f"Model: {model} ({MODEL_TITLES[model]}). ")
        + f"Data: {setup['data']}. Calibration: {setup['calibration_images']:,} images, "
        f"observer {setup['observer']} (torch.ao: {setup['torch_observer']}).",
        machine_line(setup["machine"]),
        f"ptqlib's fast path accumulates with the {setup['ptqlib_accumulator']}.",
        "",
        "| model | test accuracy | agrees with FP32 | size (bytes) | FP32 size / size |",
        "|---|---|---|---|---|",
    ]
    names = [name for name in results if name != "setup"]
    for name in names:
        row = results[name]
        lines.append(
            f"| {name} | {row['accuracy']:.2%} | {row['agreement_with_fp32']:.2%} "
            f"| {row['size_bytes']:,} | {fp32_size / row['size_bytes']:.2f}x |"
        )
    lines += [
        "",
        "Latency per batch: median ms (interquartile range) and throughput relative to FP32",
        "(above 1: faster than FP32):",
        "",
    ]
    lines += latency_markdown({name: results[name]["latency"] for name in names})
    return "\n".join(lines) + "\n"
