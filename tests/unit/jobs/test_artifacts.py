import pytest

from services.jobs.artifacts import ArtifactStore, BadArtifactKey, check_key


@pytest.mark.parametrize("key", ["../x", "a/../../b", "/etc/passwd", "a\\b", "", "a//b/..", "a/./b", ".hidden",
                                 "jobs/%2e%2e/x", "a/b\x00"])
def test_keys_that_could_escape_are_refused(key):
    with pytest.raises(BadArtifactKey):
        check_key(key)


def test_local_store_roundtrip_and_listing(tmp_path):
    store = ArtifactStore(str(tmp_path / "a"))
    store.write_bytes("jobs/j1/images/0.png", b"png")
    store.write_bytes("jobs/j1/images/1.png", b"png2")
    assert store.read_bytes("jobs/j1/images/1.png") == b"png2"
    assert store.list("jobs/j1") == ["jobs/j1/images/0.png", "jobs/j1/images/1.png"]
    assert not list((tmp_path / "a" / "jobs" / "j1" / "images").glob("*.tmp-*"))
    store.delete("jobs/j1")
    assert store.list("jobs/j1") == [] and not store.exists("jobs/j1/images/0.png")


def test_fsspec_url_store(tmp_path):
    store = ArtifactStore("memory://detbooth-test")
    store.write_bytes("jobs/j2/x.bin", b"abc")
    assert store.read_bytes("jobs/j2/x.bin") == b"abc" and store.size("jobs/j2/x.bin") == 3
    with pytest.raises(RuntimeError):
        store.local_path("jobs/j2/x.bin")


def test_upload_dir_replaces_whole_folder(tmp_path):
    src = tmp_path / "src"
    (src / "unet").mkdir(parents=True)
    (src / "unet" / "w.bin").write_bytes(b"1")
    store = ArtifactStore(str(tmp_path / "a"))
    store.upload_dir(src, "jobs/j3/model")
    assert store.list("jobs/j3/model") == ["jobs/j3/model/unet/w.bin"]
