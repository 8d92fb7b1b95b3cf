"""Checkpoint folders to and from storage: checked uploads, and what an upload cut off
mid-file leaves behind."""

from __future__ import annotations

import pytest

from memae_dist.train.transfer import download_dir, drop_cut_off_uploads, upload_dir, upload_file


def test_a_folder_round_trips(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    for name, data in (("state.pt", b"s" * 100), ("config.json", b"{}"), ("history.json", b"[]")):
        (local / name).write_bytes(data)
    target = tmp_path / "run" / "checkpoint_epoch_0001"
    upload_dir(local, str(target))
    back = tmp_path / "back"
    back.mkdir()  # a worker downloads into its scratch folder
    download_dir(str(target), back)
    assert {p.name: p.read_bytes() for p in back.iterdir()} == {
        p.name: p.read_bytes() for p in local.iterdir()}


def test_a_local_upload_cut_short_leaves_no_file_under_its_name(tmp_path, monkeypatch):
    import pyarrow.fs as pafs

    src = tmp_path / "state.pt"
    src.write_bytes(b"x" * 1000)
    dest = tmp_path / "ckpt"
    dest.mkdir()
    real_open = pafs.LocalFileSystem.open_output_stream

    class Dying(pafs.LocalFileSystem):
        def open_output_stream(self, path, *args, **kwargs):
            stream = real_open(self, path, *args, **kwargs)
            stream.write(b"half")
            raise OSError("killed mid-copy")

    with pytest.raises(OSError, match="killed"):
        upload_file(Dying(), src, str(dest / "state.pt"))
    assert list(dest.iterdir()) == []  # neither the name nor the half-written temporary
    upload_file(pafs.LocalFileSystem(), src, str(dest / "state.pt"))
    assert (dest / "state.pt").read_bytes() == src.read_bytes()


def test_only_cut_off_upload_temporaries_in_checkpoint_folders_are_dropped(tmp_path):
    run = tmp_path / "run"
    ckpt = run / "checkpoint_epoch_0002"
    ckpt.mkdir(parents=True)
    (run / "tensorboard").mkdir()
    # TensorBoard reads every file with "tfevents" in its name: a cut-off copy would be read
    # beside the whole one.
    strays = [ckpt / f"state.pt.tmp-{'0f' * 16}",
              run / "tensorboard" / f"events.out.tfevents.1.vm.tmp-{'0f' * 16}"]
    kept = [ckpt / "state.pt", ckpt / "notes.tmp-1", run / f"history.json.tmp-{'0f' * 16}"]
    for path in [*strays, *kept]:
        path.write_bytes(b"x")
    drop_cut_off_uploads(str(run))
    assert not any(p.exists() for p in strays) and all(p.exists() for p in kept)
    drop_cut_off_uploads(str(tmp_path / "no-such-run"))  # a run not started yet: nothing to do


def test_unfinished_multipart_uploads_of_checkpoints_are_aborted_on_s3(s3_bucket):
    """A worker killed mid-upload leaves a multipart upload S3 keeps (and bills) unseen."""
    import os

    import boto3

    bucket, _, data = s3_bucket[len("s3://"):].partition("/")
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                          region_name="us-east-1")
    run = f"{data}/runs/R"
    keys = [f"{run}/checkpoint_epoch_0002/state.pt", f"{run}/checkpoint_epoch_0003/config.json",
            f"{run}/tensorboard/events.out.tfevents.1.vm", f"{run}/notes/draft.bin",
            f"{data}/runs/Other/checkpoint_epoch_0001/state.pt",
            f"{data}/runs/R2/checkpoint_epoch_0001/state.pt"]
    for key in keys:
        client.create_multipart_upload(Bucket=bucket, Key=key)
    # The folder whose state.pt was cut off holds the files uploaded before it.
    client.put_object(Bucket=bucket, Key=f"{run}/checkpoint_epoch_0002/config.json", Body=b"{}")

    drop_cut_off_uploads(f"s3://{bucket}/{run}")
    left = sorted(u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get(
        "Uploads", []))
    assert left == sorted(keys[3:])  # not what lies elsewhere in the run, nor another run's
    for upload in client.list_multipart_uploads(Bucket=bucket)["Uploads"]:
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                      UploadId=upload["UploadId"])
