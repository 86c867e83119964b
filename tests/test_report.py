"""The run report (camelid/eval/report.py) on synthetic run folders: numbers, deltas, escaping, figures, hints."""

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from camelid.eval.report import main, smooth, write_report  # noqa: E402
from camelid.utils import CamelidError  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SCRIPT = "Say <script>alert(1)</script> & stop"

BEFORE = {
    "label": "before",
    "model": "tiny-base",
    "created": "2025-01-01T00:00:00",
    "tasks": {
        "arc_easy": {"acc": 0.5, "acc_norm_char": 0.52, "acc_norm_token": 0.51, "n": 200, "k_shot": 0},
        "mmlu": {
            "acc": 0.3,
            "acc_norm_char": 0.3,
            "acc_norm_token": 0.3,
            "n": 200,
            "k_shot": 5,
            "subjects": {
                "biology": {"acc": 0.35, "acc_norm_char": 0.35, "acc_norm_token": 0.35, "n": 100},
                "algebra": {"acc": 0.25, "acc_norm_char": 0.25, "acc_norm_token": 0.25, "n": 100},
            },
        },
    },
    "perplexity": {"domain.txt": {"ppl": 12.5, "tokens": 5000}},
    "samples": [{"prompt": SCRIPT, "output": "base <b>answer</b>"}, {"prompt": "2+2?", "output": "5"}],
}
AFTER = {
    "label": "after",
    "model": "runs/x/final",
    "created": "2025-01-02T00:00:00",
    "tasks": {
        "arc_easy": {"acc": 0.55, "acc_norm_char": 0.5, "acc_norm_token": 0.51, "n": 200, "k_shot": 0},
        "mmlu": {
            "acc": 0.4,
            "acc_norm_char": 0.4,
            "acc_norm_token": 0.4,
            "n": 200,
            "k_shot": 5,
            "subjects": {
                "biology": {"acc": 0.35, "acc_norm_char": 0.35, "acc_norm_token": 0.35, "n": 100},
                "algebra": {"acc": 0.45, "acc_norm_char": 0.45, "acc_norm_token": 0.45, "n": 100},
            },
        },
    },
    "perplexity": {"domain.txt": {"ppl": 10.0, "tokens": 5000}},
    "samples": [{"prompt": "2+2?", "output": "4"}, {"prompt": SCRIPT, "output": "tuned & fine"}],
}


def make_run(
    root: Path,
    name: str,
    results=(BEFORE, AFTER),
    eval_rows: bool = True,
    steps: int = 30,
    start_loss: float = 3.0,
    config_extra: str = "",
) -> Path:
    """A run folder as `camelid sft` + `camelid eval` leave it, with a steadily falling loss."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        "model:\n  name: tiny-base\nmethod: lora\ntrain:\n  lr: 0.001\n  max_steps: 30\n"
        "data:\n  train:\n  - my_data.jsonl\n" + config_extra,
        encoding="utf-8",
    )
    rows = [{"step": 0, "eval_loss": 2.9, "eval_ppl": 18.2}] if eval_rows else []
    for step in range(1, steps + 1):
        row = {
            "step": step,
            "epoch": 0,
            "loss": start_loss - 0.05 * step + 0.02 * (step % 3),
            "lr": 1e-3,
            "grad_norm": 0.5,
            "tokens": 100 * step,
            "tokens_per_s": 50.0,
        }
        if eval_rows and step % 10 == 0:  # the loop merges mid-run evals into the training line
            row |= {"eval_loss": 2.9 - 0.04 * step, "eval_ppl": 1.0}
        rows.append(row)
    if eval_rows:  # and repeats the final eval on a line of its own
        rows.append({"step": steps, "eval_loss": 2.9 - 0.04 * steps, "eval_ppl": 1.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if results:
        (run / "eval").mkdir()
        for res in results:
            (run / "eval" / f"{res['label']}.json").write_text(json.dumps(res), encoding="utf-8")
    return run


def images(index: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', index.read_text(encoding="utf-8"))


def squash(html: str) -> str:
    return html.replace("\n", "")


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[Path, str]:
    run = make_run(tmp_path_factory.mktemp("runs"), "sft-run")
    index = write_report([run], run / "report")
    return index, index.read_text(encoding="utf-8")


def test_task_tables_have_numbers_and_colored_deltas(full_report):
    _, page = full_report
    # score | before | after | Δ, green for a gain, red for a loss, uncolored for no change
    assert '<td>acc</td><td>0.5000</td><td>0.5500</td><td class="good">+0.0500</td>' in page
    assert '<td>acc_norm_char</td><td>0.5200</td><td>0.5000</td><td class="bad">-0.0200</td>' in page
    assert "<td>acc_norm_token</td><td>0.5100</td><td>0.5100</td><td>+0.0000</td>" in page
    assert '<td>acc</td><td>0.3000</td><td>0.4000</td><td class="good">+0.1000</td>' in page
    assert "Δ (after − before)" in page
    assert "n = 200; k_shot = 5" in page


def test_subject_table_sorted_by_delta_with_macro_average(full_report):
    _, page = full_report
    assert page.count("<details>") == 1  # only mmlu has subjects
    macro = (
        '<td class="key">macro average</td><td class="key">0.3000</td><td class="key">0.4000</td>'
        '<td class="good">+0.1000</td><td class="key">2 subjects</td>'
    )
    assert macro in page
    algebra = '<td>algebra</td><td>0.2500</td><td>0.4500</td><td class="good">+0.2000</td><td>100</td>'
    biology = "<td>biology</td><td>0.3500</td><td>0.3500</td><td>+0.0000</td><td>100</td>"
    assert algebra in page and biology in page
    assert page.index(macro) < page.index(algebra) < page.index(biology)  # biggest gain first


def test_perplexity_and_header(full_report):
    _, page = full_report
    # lower perplexity is better: a drop is green, with the relative change
    assert '<td>domain.txt</td><td>12.500</td><td>10.000</td><td class="good">-2.500 (-20.0%)</td><td>5000</td>' in page
    for text in (
        "tiny-base",
        "<td>lora</td>",
        "<td>0.001</td>",
        "30 (max_steps)",
        "my_data.jsonl",
        "metrics.jsonl (30 training steps, 4 eval points)",
        "eval/before.json (model tiny-base",
        "eval/after.json (model runs/x/final",
    ):
        assert text in page, text
    assert 'class="note"' not in page  # nothing is missing


def test_samples_side_by_side_and_escaped(full_report):
    _, page = full_report
    assert "<script" not in page and "<b>" not in page
    row = (
        '<tr><td class="text">Say &lt;script&gt;alert(1)&lt;/script&gt; &amp; stop</td>'
        '<td class="text">base &lt;b&gt;answer&lt;/b&gt;</td><td class="text">tuned &amp; fine</td></tr>'
    )
    assert row in page  # matched by prompt even though the two files list them in another order
    assert '<td class="text">2+2?</td><td class="text">5</td><td class="text">4</td>' in page


def test_images_are_real_local_pngs(full_report):
    index, page = full_report
    srcs = images(index)
    assert sorted(srcs) == ["benchmarks-1.png", "eval_loss.png", "loss.png"]
    for src in srcs:
        png = index.parent / src  # relative to the page, so the folder can be moved or zipped
        data = png.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5000, src
    assert "http://" not in page and "https://" not in page  # viewable offline: nothing remote


def test_run_without_eval_folder_or_eval_rows(tmp_path):
    run = make_run(tmp_path, "bare", results=(), eval_rows=False, config_extra="eval:\n  tasks: [mmlu]\n")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 31, "lo')  # a run still writing leaves half a line
    page = write_report([run], tmp_path / "out").read_text(encoding="utf-8")
    # The hints are commands to paste: the tasks come from the run's own config, the rest are placeholders.
    assert f"<code>camelid eval {run} --before eval.tasks=[mmlu]</code>" in page
    assert f"<code>camelid eval {run} eval.tasks=[mmlu]</code>" in page
    assert f"<code>camelid eval {run} --before eval.perplexity=[FILE.txt]</code>" in page
    assert "No benchmark scores" in page and "No perplexity" in page and "No sample generations" in page
    assert "No eval loss in any run" in page and "data.eval_split" in page
    assert "1 unreadable lines skipped" in page
    assert images(tmp_path / "out" / "index.html") == ["loss.png"]


def test_only_before_label_says_how_to_score_the_trained_model(tmp_path):
    run = make_run(tmp_path, "half", results=(BEFORE,))
    page = write_report([run], tmp_path / "out").read_text(encoding="utf-8")
    assert "No benchmark scores for the trained model" in page
    assert f"<code>camelid eval {run} eval.tasks=[mmlu,arc_easy]</code>" in page
    assert "Δ (after" not in page  # one label: nothing to subtract
    assert "<td>acc</td><td>0.5000</td></tr>" in squash(page)
    assert '<td class="text">base &lt;b&gt;answer&lt;/b&gt;</td>' in page


def test_unreadable_eval_file_is_reported_not_fatal(tmp_path):
    run = make_run(tmp_path, "broken", results=(BEFORE,))
    (run / "eval" / "after.json").write_text('{"label": "after", "tasks": {', encoding="utf-8")
    page = write_report([run], tmp_path / "out").read_text(encoding="utf-8")
    assert "eval/after.json could not be read" in page


def test_two_runs_side_by_side(tmp_path):
    a = make_run(tmp_path, "run-a")
    b = make_run(tmp_path, "run-b", results=(BEFORE,), start_loss=4.0)
    index = write_report([a, b], tmp_path / "cmp")
    page = index.read_text(encoding="utf-8")
    # The alt text is the legend matplotlib drew: both runs are in the loss plots.
    assert 'alt="training loss: run-a, run-b"' in page and 'alt="eval loss: run-a, run-b"' in page
    # final losses per run: run-a ends at 3.0 - 1.5 + 0 = 1.5, run-b at 2.5
    assert "<tr><td>run-a</td><td>30</td><td>2.9700</td><td>1.5000</td>" in page
    assert "<tr><td>run-b</td><td>30</td><td>3.9700</td><td>2.5000</td>" in page
    assert "<th>run-a</th><th>run-b</th>" in page  # config header, one column per run
    # benchmark overview: run-a has before/after, run-b only before
    assert (
        '<td>arc_easy</td><td>0.5000</td><td>0.5500</td><td class="good">+0.0500</td><td>0.5000</td><td>—</td>' in page
    )
    assert sorted(images(index)) == ["benchmarks-1.png", "benchmarks-2.png", "eval_loss.png", "loss.png"]


def test_same_folder_names_are_told_apart(tmp_path):
    a, b = make_run(tmp_path / "x", "final", results=()), make_run(tmp_path / "y", "final", results=())
    page = write_report([a, b], tmp_path / "cmp").read_text(encoding="utf-8")
    assert f'alt="training loss: {a}, {b}"' in page


def test_cli_defaults_to_report_folder_in_first_run(tmp_path, capsys):
    run = make_run(tmp_path, "cli-run", results=())
    main([str(run)])
    assert capsys.readouterr().out.strip() == str(run / "report" / "index.html")
    assert (run / "report" / "loss.png").exists()


def test_not_a_run_folder(tmp_path):
    with pytest.raises(CamelidError, match="not a run folder"):
        write_report([tmp_path], tmp_path / "out")
    with pytest.raises(CamelidError, match="not a folder"):
        write_report([tmp_path / "missing"], tmp_path / "out")


def test_smooth_is_a_debiased_moving_average():
    assert smooth([2.0] * 50) == pytest.approx([2.0] * 50)  # no pull towards 0 at the start
    values = [float(i % 2) for i in range(100)]
    out = smooth(values)
    assert out[0] == 0.0 and max(out[50:]) - min(out[50:]) < 0.2  # the zigzag is flattened
    assert smooth([1.0, 3.0], weight=0.0) == [1.0, 3.0]


def test_partial_and_odd_results_render(tmp_path):
    """Fields may be missing or odd (a task on one side only, no subjects before, a bad value): no crash, '—' cells."""
    before = {
        "label": "before",
        "tasks": {"arc_easy": {"acc": 0.5}, "mmlu": {"acc": 0.3}},
        "perplexity": {"a.txt": {"ppl": "n/a"}},
        "samples": ["not a dict"],
    }
    after = {
        "label": "after",
        "tasks": {"mmlu": {"acc": 0.4, "subjects": {"law": {"acc": 0.4}}}, "ceval": {"acc": None}},
        "perplexity": [],
        "samples": [],
    }
    run = make_run(tmp_path, "odd", results=(before, after))
    page = squash(write_report([run], tmp_path / "out").read_text(encoding="utf-8"))
    assert "<td>acc</td><td>0.5000</td><td>—</td><td>—</td>" in page  # arc_easy: after missing
    assert "<td>acc</td><td>—</td><td>—</td><td>—</td>" in page  # ceval: acc is null
    assert "<td>law</td><td>—</td><td>0.4000</td><td>—</td>" in page
    assert "<td>a.txt</td><td>—</td><td>—</td></tr>" in page  # tokens unknown too
    assert "No perplexity for the trained model" in page and "No sample generations for the trained model" in page


def test_ppo_and_preference_runs_get_their_curves(tmp_path):
    ppo = tmp_path / "ppo"
    ppo.mkdir()
    (ppo / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"step": s, "score": 0.1 * s, "kl": 0.5 * s, "entropy": 6 - 0.1 * s}) + "\n" for s in range(1, 6)
        )
    )
    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "metrics.jsonl").write_text(
        "".join(
            json.dumps(
                {"step": s, "loss": 0.7 - 0.1 * s, "eval_loss": 0.7, "eval_accuracy": 0.5 + 0.1 * s, "eval_margin": s}
            )
            + "\n"
            for s in (0, 2, 4)
        )
    )
    index = write_report([ppo, rm], tmp_path / "out")
    page = index.read_text(encoding="utf-8")
    assert "<h2>Alignment</h2>" in page
    assert 'alt="score: ppo"' in page and 'alt="eval_accuracy: rm"' in page
    assert {"score.png", "kl.png", "entropy.png", "eval_accuracy.png", "eval_margin.png"} <= set(images(index))
    plain = make_run(tmp_path, "plain")  # an sft run has no alignment section
    assert "<h2>Alignment</h2>" not in write_report([plain], tmp_path / "out2").read_text(encoding="utf-8")


def make_recipe_folder(root: Path) -> Path:
    """A recipe's folder as `camelid run` leaves it: lineage.json, eval stages, a training stage, a tok extend
    report, and a failed stage."""
    folder = root / "runs" / "zh"
    base = {"label": "model", "tasks": {"news": {"acc": 0.25, "acc_norm": 0.25, "acc_norm_token": 0.25, "n": 100}}}
    base["perplexity"] = {"held.txt": {"ppl": 30.0, "tokens": 2000, "bits_per_char": 3.1}}
    base["samples"] = [{"prompt": "你好？", "output": "base answer"}]
    end = {"label": "model", "tasks": {"news": {"acc": 0.4, "acc_norm": 0.4, "acc_norm_token": 0.4, "n": 100}}}
    end["perplexity"] = {"held.txt": {"ppl": 45.0, "tokens": 1200, "bits_per_char": 2.6}}
    end["samples"] = [{"prompt": "你好？", "output": "tuned <b>answer</b>"}]
    for name, result in (("base", base), ("eval", end)):
        (folder / name / "eval").mkdir(parents=True)
        (folder / name / "eval" / "model.json").write_text(json.dumps(result), encoding="utf-8")
    make_run(folder, "sft", results=())
    middle = {"label": "after", "tasks": {"news": {"acc": 0.3, "acc_norm": 0.3, "acc_norm_token": 0.3, "n": 100}}}
    (folder / "eval_sft").mkdir()  # `camelid eval RUN --out DIR` of a run folder writes DIR/after.json
    (folder / "eval_sft" / "after.json").write_text(json.dumps(middle), encoding="utf-8")
    (folder / "tok").mkdir()
    tokens = {"held.txt": {"chars": 900, "tokens_per_char_before": 1.85, "tokens_per_char_after": 1.1}}
    (folder / "tok" / "tok_report.json").write_text(json.dumps({"tokens_per_char": tokens}), encoding="utf-8")
    stages = {
        "base": {"verb": "eval", "reads": [], "state": "done", "seconds": 80.0},
        "tok": {"verb": "tok extend", "reads": [], "state": "done", "seconds": 40.0},
        "sft": {"verb": "sft", "reads": ["tok"], "state": "done", "seconds": 300.0, "metrics": {"loss": 1.5}},
        "eval_sft": {"verb": "eval", "reads": ["sft"], "state": "done", "seconds": 0.0},
        "export": {"verb": "export", "reads": ["sft"], "state": "done", "seconds": 20.0},
        "eval": {"verb": "eval", "reads": ["export"], "state": "done", "seconds": 90.0},
        "kb": {"verb": "kb add", "reads": [], "state": "failed", "seconds": 3.0, "error": "no such file"},
    }
    (folder / "lineage.json").write_text(json.dumps({"recipe": "zh.yaml", "stages": stages}), encoding="utf-8")
    return folder


def test_a_recipe_folder_reports_its_stages_and_the_chain_first_against_last(tmp_path):
    folder = make_recipe_folder(tmp_path)
    index = main([str(folder)])
    assert index == folder / "report" / "index.html"
    page = squash(index.read_text(encoding="utf-8"))
    assert "<h2>Recipe zh.yaml</h2>" in page and "8.9 min of stage time" in page
    assert (folder / "report" / "lineage.png").read_bytes().startswith(PNG_SIGNATURE)
    assert '<td class="bad">failed</td>' in page and "no such file" in page
    # first (base) against last (eval): accuracy up is good, bits per character down is good
    assert (
        '<td class="key">news accuracy</td><td>0.2500</td><td>0.3000</td><td>0.4000</td>'
        '<td class="good">+0.1500 (+60.0%)</td>' in page
    )
    bits = '<td class="key">held.txt bits per character</td><td>3.1000</td><td>—</td><td>2.6000</td><td class="good">'
    assert bits in page
    assert '<td>1.850</td><td>1.100</td><td class="good">-0.750 (-40.5%)</td>' in page
    assert "tuned &lt;b&gt;answer&lt;/b&gt;" in page  # sample answers side by side, escaped
    assert "<h2>Training loss</h2>" in page and "<th>sft</th>" in page  # then the stages' own sections
    assert images(index)[0] == "lineage.png" and len(images(index)) > 1


def test_the_recipe_report_as_a_browser_shows_it(tmp_path, chromium):
    """Headless Chromium renders the page; the screenshot must show the lineage picture (its green "done" and red
    "failed" boxes are drawn only in that PNG) and the table's green delta text."""
    from PIL import Image

    index = main([str(make_recipe_folder(tmp_path))])
    shot = tmp_path / "report.png"
    chromium(index, shot, width=1200, height=2400)
    pixels = Image.open(shot).convert("RGB")
    colors = dict((rgb, n) for n, rgb in pixels.getcolors(maxcolors=1 << 20))
    assert colors.get((0xDA, 0xFB, 0xE1), 0) > 2000  # done boxes
    assert colors.get((0xFF, 0xEB, 0xE9), 0) > 300  # the failed box
    assert colors.get((0x1A, 0x7F, 0x37), 0) > 20  # green "good" deltas in the chain table
