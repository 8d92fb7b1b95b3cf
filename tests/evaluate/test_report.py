"""``memae-dist report``: the expected figures, and an index.html that shows them all."""

import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from memae_dist.cli import main
from memae_dist.evaluate.batch_score import (
    ScoreConfig,
    read_scores,
    score_dataset,
    write_scores,
)
from memae_dist.evaluate.protocol import METRICS
from tests.evaluate.conftest import make_checkpoint, write_scores_file

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """Collects images, links and headings, and checks that every tag is closed in order."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.images, self.anchors, self.ids, self.text, self.stack = [], [], set(), [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a":
            self.anchors.append(attrs["href"])
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(path) -> Page:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    page = Page()
    page.feed(text)
    page.close()
    assert page.stack == []
    return page


@pytest.fixture(scope="module")
def scores(segmented_data, tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("scores") / "scores.parquet"
    score_dataset(tiny_checkpoint, segmented_data, str(out),
                  ScoreConfig(workers=0, batch_size=8, progress=False))
    return out


def test_report_with_model_has_every_figure(scores, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", "--scores", str(scores), "--out", str(out), "--top", "2",
                 "--frame", "02:20", "--slots", "12"]) == 0
    assert "report:" in capsys.readouterr().out
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == ["index.html", "memory_slots.png", "roc.png", "triptychs/02_20.png",
                     "videos/01.png", "videos/02.png", "videos/03.png"]
    for png in out.rglob("*.png"):
        assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 2000
    page = parse(out / "index.html")
    assert sorted(page.images) == sorted(n for n in names if n.endswith(".png"))
    assert all((out / src).is_file() for src in page.images)
    assert all(a.lstrip("#") in page.ids for a in page.anchors)
    text = " ".join(page.text)
    for key in METRICS:
        assert key in text
    assert "Thresholds on the raw error" in text and "best F1" in text
    assert "video 02, frame 20" in text
    assert "figures' checkpoint" not in text  # the scoring checkpoint drew them


def test_figures_of_another_checkpoint_than_the_scores_say_so(scores, segmented_data, tmp_path,
                                                             capsys):
    # Before: the page named only the scoring checkpoint above another model's reconstructions.
    other = make_checkpoint(tmp_path / "other" / "checkpoint_epoch_0001", segmented_data)
    out = tmp_path / "report"
    assert main(["report", "--scores", str(scores), "--out", str(out), "--top", "1",
                 "--slots", "4", "--checkpoint", other]) == 0
    printed = capsys.readouterr().out
    assert f"note: Reconstructions and the memory picture come from {other}, not from the " \
           "checkpoint that scored these frames" in printed
    text = " ".join(parse(out / "index.html").text)
    assert "figures' checkpoint" in text and other in text


def test_report_refuses_bad_input_before_writing(scores, tiny_checkpoint, segmented_data,
                                                  tmp_path, capsys):
    out = tmp_path / "refused"
    gone = tmp_path / "gone"
    foreign = tmp_path / "foreign"  # a torch file of someone else's, beside a real config
    foreign.mkdir()
    torch.save({"a": 1}, foreign / "state.pt")
    shutil.copy(Path(tiny_checkpoint) / "config.json", foreign)
    larger = make_checkpoint(tmp_path / "larger" / "checkpoint_epoch_0001", segmented_data,
                             trained_on={"size": [64, 64]})
    for extra, why in ((["--frame", "01:3"], "that frame has no score"),
                       (["--frame", "zz:3"], "no video 'zz' in the scores"),
                       (["--checkpoint", str(gone)], str(gone)),  # named by the user: must load
                       (["--checkpoint", str(foreign)],
                        f"{foreign / 'state.pt'} is not a memae-dist checkpoint"),
                       (["--checkpoint", larger], "but the checkpoint was trained on 64x64"),
                       ([], "S3 bucket 'bucket' does not exist")):
        dest = "s3://bucket/report" if not extra else str(out)
        assert main(["report", "--scores", str(scores), "--out", dest, *extra]) == 2
        assert why in capsys.readouterr().err
        assert not out.exists() and not Path("s3:").exists()


def test_report_top_frames_and_missing_model(scores, tmp_path):
    # Default frame choice: the top-scoring frame of each of the --top videos.
    out = tmp_path / "top"
    assert main(["report", "--scores", str(scores), "--out", str(out), "--top", "2",
                 "--slots", "4"]) == 0
    assert len(list((out / "triptychs").glob("*.png"))) == 2
    # A scores file whose checkpoint is gone still gives plots, and says why the rest is missing.
    table, meta = read_scores(str(scores))
    moved = tmp_path / "moved.parquet"
    write_scores(str(moved), table, {**meta, "checkpoint": str(tmp_path / "gone")})
    out = tmp_path / "nomodel"
    assert main(["report", "--scores", str(moved), "--out", str(out)]) == 0
    assert not (out / "triptychs").exists() and not (out / "memory_slots.png").exists()
    page = parse(out / "index.html")
    assert "roc.png" in page.images and len(page.images) == 4
    assert "No reconstructions or memory picture" in " ".join(page.text)
    # A frame without a score is refused with a clear message.
    assert main(["report", "--scores", str(scores), "--out", str(out), "--frame", "01:3"]) == 2
    # A reused folder holds one report: the earlier one's figures go (two videos fewer now).
    (out / "videos" / "zz.png").write_bytes(b"")
    (out / "notes.txt").write_text("mine")
    two = tmp_path / "two.parquet"
    keep = pa.array([v in ("01", "02") for v in table.column("video").to_pylist()])
    write_scores(str(two), table.filter(keep), meta)
    assert main(["report", "--scores", str(two), "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["01.png", "02.png"]
    assert (out / "notes.txt").read_text() == "mine"


def test_report_into_an_unwritable_folder_says_which_file(scores, tmp_path, capsys):
    # Root-proof ways for a write to fail: a folder where a figure goes, a folder /proc refuses.
    out = tmp_path / "blocked"
    (out / "roc.png").mkdir(parents=True)
    assert main(["report", "--scores", str(scores), "--out", str(out), "--slots", "4"]) == 2
    assert capsys.readouterr().err == (f"memae-dist: error: cannot write {out / 'roc.png'}: "
                                       "is a directory\n")
    assert [p.name for p in out.iterdir()] == ["roc.png"]  # no temporary file left behind
    (out / "roc.png").rmdir()
    (out / "index.html").mkdir()
    assert main(["report", "--scores", str(scores), "--out", str(out), "--slots", "4"]) == 2
    assert f"cannot write {out / 'index.html'}: is a directory" in capsys.readouterr().err
    assert not list(out.rglob(".*.tmp-*"))
    assert main(["report", "--scores", str(scores), "--out", "/proc/memae-dist/report"]) == 2
    assert capsys.readouterr().err == ("memae-dist: error: --out /proc/memae-dist/report: "
                                       "cannot write there: no such file or directory\n")


def test_video_names_that_are_paths_never_write_outside_the_report(scores, tmp_path, capsys):
    table, meta = read_scores(str(scores))
    names = table.column("video").to_pylist()
    for bad in ("../../escape", "a/b", ".."):
        renamed = table.set_column(table.schema.get_field_index("video"), "video",
                                   pa.array([bad if n == names[0] else n for n in names]))
        edited = tmp_path / "edited.parquet"
        write_scores(str(edited), renamed, meta)
        out = tmp_path / "work" / "report"
        assert main(["report", "--scores", str(edited), "--out", str(out)]) == 2
        assert f"video name {bad!r} cannot be a file name" in capsys.readouterr().err
        assert not (tmp_path / "work").exists() and not (tmp_path / "escape.png").exists()


def test_a_missing_shard_is_refused_before_any_figure(scores, segmented_data, tmp_path, capsys):
    data = shutil.copytree(segmented_data, tmp_path / "data")
    next(data.glob("test/*.parquet")).unlink()
    out = tmp_path / "report"
    assert main(["report", "--scores", str(scores), "--out", str(out), "--data", str(data)]) == 2
    assert "is missing: rerun the same 'memae-dist prepare'" in capsys.readouterr().err
    assert not out.exists()


def test_thresholds_of_a_normal_only_split_show_budgets_without_recall():
    from memae_dist.evaluate.report import _thresholds_section
    from memae_dist.evaluate.thresholds import deployment_thresholds

    scores = np.arange(2000) / 1000
    html_rows = "".join(_thresholds_section(deployment_thresholds(np.zeros(2000), scores), "val"))
    assert html_rows.count("false positives &le;") == 3 and "best F1" not in html_rows
    assert "<td>1.9</td>" in html_rows  # 5%: the lowest of the top 100 of 2,000
    # In full: 0.1000019 shown as 0.100002 would flag 99 frames, not the FPR's 100.
    scores = 0.1 + np.arange(2000) * 1e-9
    html_rows = "".join(_thresholds_section(deployment_thresholds(np.zeros(2000), scores), "val"))
    assert f"<td>{float(scores[1900])!r}</td>" in html_rows


def test_a_still_image_set_is_reported_by_groups_of_images(tmp_path):
    scores = write_scores_file(tmp_path / "scores.parquet", content="images")
    out = tmp_path / "report"
    assert main(["report", "--scores", scores, "--out", str(out), "--max-videos", "1"]) == 0
    page = parse(out / "index.html")
    text = " ".join(page.text)
    assert "Groups of images" in text and "Videos" not in text
    assert "groups" in text and "images scored" in text and "frames scored" not in text
    assert "a video is a group of images stored together" in text
    assert "Error histograms for the first 1 of 2 groups only" in text
    assert not (out / "videos").exists()
    with Image.open(out / "groups" / "01.png") as img:
        assert img.text["Title"].startswith("error histogram of group 01")
    with Image.open(out / "roc.png") as img:
        assert img.text["Title"] == "image-level ROC (2 groups, 24 images)"
