"""`wsicl serve` and its clients, on loopback only: the same masks as a local run, the
token, limits, malformed input, a full queue, cancel, a server killed or restarted.

Servers run as real `wsicl serve` processes on a free port, or (for the queue and cancel
cases, which need a job that waits on the test) in a thread of this process. Every wait
is bounded in time.
"""
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import CPU_FP32, make_image, rotation_direction
from served import BOX, TOKEN, ServerProcess, blob, write_served_model, write_token
from wsicl import Box, Cancelled, ContextSet, Predictor
from wsicl.cli import main
from wsicl.server.client import RemoteError, RemotePredictor, check_server
from wsicl.server.service import Service, VolumeStore


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return write_served_model(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    return write_token(tmp_path_factory.mktemp("token"))


@pytest.fixture(scope="module")
def server(model_file, token_file):
    running = ServerProcess("--port", "0", "--model", str(model_file), "--token-file",
                            str(token_file), "--queue", "4")
    yield running
    running.stop()


def local(model_file) -> Predictor:
    return Predictor(str(model_file), "cpu", precision="fp32")


def same(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize() and a.GetOrigin() == b.GetOrigin()
    assert a.GetSpacing() == b.GetSpacing() and a.GetDirection() == b.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


def test_remote_masks_equal_local_ones_in_context_interactive_and_several_targets(
        server, model_file):
    remote = RemotePredictor(server.url, TOKEN, "tiny", timeout=120)
    near = local(model_file)
    context = ContextSet(name="blob").add(blob(0), [BOX])
    targets = [blob(1), blob(2, rotation_direction(30.0))]
    remote_masks = [s.mask for _, s in remote.segment_many(targets, context)]
    for target, mask in zip(targets, remote_masks):
        expected = near.segment(target, context).mask
        same(mask, expected)
        assert 0 < sitk.GetArrayViewFromImage(expected).sum() < expected.GetNumberOfPixels()
    same(remote.segment_interactive(targets[0], [BOX]).mask,
         near.segment_interactive(targets[0], [BOX]).mask)
    # an update sends only prompts: the image is uploaded once per server
    uploads = len(remote._ids)
    remote.segment_interactive(targets[0], [Box((14, 10, 12), (28, 26, 12))])
    assert len(remote._ids) == uploads


def test_cli_segment_with_server_writes_what_a_local_run_writes(server, model_file,
                                                                 token_file, tmp_path):
    sitk.WriteImage(blob(0), str(tmp_path / "context.nii.gz"))
    sitk.WriteImage(blob(3), str(tmp_path / "target.nii.gz"))
    (tmp_path / "set.json").write_text(json.dumps({"name": "blob", "context": [
        {"image": "context.nii.gz", "boxes": [{"min": list(BOX.min), "max": list(BOX.max)}]}]}))
    common = ["segment", str(tmp_path / "target.nii.gz"), "--context-set",
              str(tmp_path / "set.json"), "--quiet"]
    assert main(common + ["--output-dir", str(tmp_path / "local"), "--model", str(model_file),
                          *CPU_FP32]) == 0
    assert main(common + ["--output-dir", str(tmp_path / "remote"), "--model", "tiny",
                          "--server", server.url, "--token-file", str(token_file)]) == 0
    same(sitk.ReadImage(str(tmp_path / "remote" / "target_blob.nii.gz")),
         sitk.ReadImage(str(tmp_path / "local" / "target_blob.nii.gz")))


def raw(url: str, method: str = "GET", body: bytes = None, token: str = TOKEN,
        content_type: str = None, headers: dict = None):
    """``(status, headers, JSON or bytes)`` of one request (10 s at most); a body is sent
    as ``content_type`` (default: what the client sends, application/octet-stream to
    /v1/volumes, JSON elsewhere)."""
    request = urllib.request.Request(url, body, method=method, headers=headers or {})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", content_type or (
            "application/octet-stream" if "/v1/volumes" in url else "application/json"))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, headers, payload = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, headers, payload = error.code, error.headers, error.read()
    try:
        return status, headers, json.loads(payload)
    except ValueError:
        return status, headers, payload


def test_token_is_required_except_for_health(server):
    assert raw(server.url + "/v1/health", token="")[0] == 200
    for token in ("", "wrong-token"):
        status, headers, answer = raw(server.url + "/v1/info", token=token)
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        assert raw(server.url + "/openapi.json", token=token)[0] == 401
        with pytest.raises(RemoteError, match="refused the token"):
            RemotePredictor(server.url, token or None, "tiny")
    status, _, schema = raw(server.url + "/openapi.json")
    assert status == 200 and "/v1/jobs/{job_id}/mask" in schema["paths"]
    assert "tiny" in check_server(server.url, TOKEN)


def test_serve_refuses_to_expose_itself_without_a_token_or_on_a_busy_port(server, model_file,
                                                                          capsys):
    assert main(["serve", "--host", "0.0.0.0", "--model", str(model_file)]) == 1
    assert "refusing to listen on 0.0.0.0 without a token" in capsys.readouterr().err
    port = server.url.rsplit(":", 1)[1]
    assert main(["serve", "--port", port, "--model", str(model_file)]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    status, _, _ = raw(server.url + "/v1/jobs/x?wait=nan")
    assert status == 404                         # a strange wait is read as 0, not an error


def test_malformed_volumes_and_unknown_ids_are_refused_with_reasons(server, tmp_path):
    url = server.url + "/v1/volumes?format="
    status, _, answer = raw(url + "mha", "POST", b"not an image at all", content_type="x/y")
    assert status == 415 and "application/octet-stream" in answer["detail"]
    status, _, answer = raw(url + "mha", "POST", b"not an image at all")
    assert status == 422 and "uploaded volume" in answer["detail"]
    assert "/tmp" not in answer["detail"] and "Traceback" not in answer["detail"]
    assert raw(url + "exe", "POST", b"MZ")[0] == 422
    assert raw(url + "mha", "POST", b"")[0] == 422
    sitk.WriteImage(blob(0), str(tmp_path / "whole.mha"))
    whole = (tmp_path / "whole.mha").read_bytes()
    status, _, answer = raw(url + "mha", "POST", whole[:len(whole) // 2])
    assert status == 422 and "uploaded volume" in answer["detail"]
    flat = sitk.Image(8, 8, sitk.sitkFloat32)
    sitk.WriteImage(flat, str(tmp_path / "flat.mha"))
    status, _, answer = raw(url + "mha", "POST", (tmp_path / "flat.mha").read_bytes())
    assert status == 422 and "2D" in answer["detail"]
    status, _, answer = raw(url + "mha", "POST", whole)
    assert status == 201
    job = {"model": "tiny", "mode": "interactive", "target": "no-such-id",
           "boxes": [{"min": [1, 1, 1], "max": [5, 5, 1]}]}
    status, _, answer = raw(server.url + "/v1/jobs", "POST", json.dumps(job).encode())
    assert status == 404 and "upload the volume again" in answer["detail"]
    status, _, answer = raw(server.url + "/v1/jobs", "POST", json.dumps(
        {**job, "model": "nope"}).encode())
    assert status == 404 and "tiny" in answer["detail"]
    status, _, answer = raw(server.url + "/v1/jobs", "POST", b"{not json")
    assert status == 422
    assert raw(server.url + "/v1/jobs/unknown/mask")[0] == 404


def test_four_concurrent_clients_get_their_own_answers(server, model_file):
    near = local(model_file)
    context = ContextSet(name="blob").add(blob(0), [BOX])
    targets = [blob(10 + i) for i in range(4)]
    results, errors = [None] * 4, []

    def client(index: int) -> None:
        try:
            remote = RemotePredictor(server.url, TOKEN, "tiny", timeout=120)
            results[index] = remote.segment(targets[index], context).mask
        except Exception as error:              # reported below
            errors.append(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors
    for target, mask in zip(targets, results):
        same(mask, near.segment(target, context).mask)


def test_an_oversized_upload_is_refused_before_it_is_read(model_file, token_file):
    small = ServerProcess("--port", "0", "--model", str(model_file), "--token-file",
                          str(token_file), "--max-upload-mb", "1")
    try:
        big = make_image(np.random.default_rng(0).normal(size=(64, 80, 80)).astype(np.float32))
        remote = RemotePredictor(small.url, TOKEN, "tiny")
        with pytest.raises(ValueError, match="larger than the server accepts"):
            remote.segment_interactive(big, [BOX])
        status, _, answer = raw(small.url + "/v1/volumes?format=mha", "POST",
                                b"x" * (2 * 2 ** 20))
        assert status == 413
    finally:
        small.stop()


def test_killed_and_restarted_servers(model_file, token_file, tmp_path):
    first = ServerProcess("--port", "0", "--model", str(model_file), "--token-file",
                          str(token_file),      # killed below: its upload folder stays here
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    port = first.url.rsplit(":", 1)[1]
    remote = RemotePredictor(first.url, TOKEN, "tiny", timeout=60)
    context = ContextSet(name="blob").add(blob(0), [BOX])
    before = remote.segment(blob(1), context).mask
    # killed while a request waits on it: the client fails with one clear error
    outcome: "queue.Queue[object]" = queue.Queue()
    os.kill(first.process.pid, signal.SIGSTOP)
    worker = threading.Thread(target=lambda: outcome.put(_outcome(
        lambda: remote.segment(blob(2), context))), daemon=True)
    worker.start()
    time.sleep(0.5)
    first.stop()
    worker.join(60)
    error = outcome.get(timeout=1)
    assert isinstance(error, RemoteError), error
    assert "broke" in str(error) or "cannot reach" in str(error), error
    with pytest.raises(RemoteError, match="cannot reach the WSICL server"):
        remote.segment(blob(1), context)
    # the CLI says so in one line and writes nothing
    sitk.WriteImage(blob(3), str(tmp_path / "target.nii.gz"))
    sitk.WriteImage(blob(0), str(tmp_path / "context.nii.gz"))
    (tmp_path / "set.json").write_text(json.dumps({"context": [
        {"image": "context.nii.gz", "boxes": [{"min": list(BOX.min), "max": list(BOX.max)}]}]}))
    result = subprocess.run(
        [sys.executable, "-m", "wsicl.cli", "segment", str(tmp_path / "target.nii.gz"),
         "--context-set", str(tmp_path / "set.json"), "--output-dir", str(tmp_path / "out"),
         "--model", "tiny", "--server", first.url, "--quiet"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "cannot reach" in result.stderr
    assert not (tmp_path / "out" / "target_set.nii.gz").exists()
    # restarted on the same port: the same client carries on (uploading again)
    second = ServerProcess("--port", port, "--model", str(model_file), "--token-file",
                           str(token_file))
    try:
        same(remote.segment(blob(1), context).mask, before)
    finally:
        second.stop()


def _outcome(call):
    try:
        return call()
    except Exception as error:
        return error


def test_a_connection_dropped_mid_request_fails_cleanly():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def drop_one() -> None:
        listener.settimeout(20)
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.close()

    threading.Thread(target=drop_one, daemon=True).start()
    with pytest.raises(RemoteError, match="connection to the server .* broke"):
        RemotePredictor(f"http://127.0.0.1:{listener.getsockname()[1]}", TOKEN, "tiny")
    listener.close()


class InProcessServer:
    """The HTTP app around ``service`` on a free loopback port, in a thread."""

    def __init__(self, service: Service, token: str = TOKEN,
                 max_upload_bytes: int = 2 ** 30, folder: Path = None,
                 protocol: type = None) -> None:
        import uvicorn
        from wsicl.server.app import create_app, listening_socket
        self.socket = listening_socket("127.0.0.1", 0, token)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        app = create_app(service, token, max_upload_bytes, folder)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off",
                                                    http=protocol or "h11"))
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        self.service = service

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.service.close()
        self.socket.close()


class Gated(Predictor):
    """A predictor whose in-context runs wait until the test opens ``gate``."""

    gate = threading.Event()

    def segment(self, *arguments, **keywords):
        assert self.gate.wait(30), "the test never opened the gate"
        return super().segment(*arguments, **keywords)


@pytest.fixture
def gated(model_file, tmp_path):
    Gated.gate = threading.Event()
    running = InProcessServer(Service({"tiny": Gated(str(model_file), "cpu",
                                                     precision="fp32")}, queue_size=2),
                              folder=tmp_path)
    yield running
    Gated.gate.set()
    running.stop()


def test_a_burst_beyond_the_queue_is_refused_with_retry_after_and_nothing_is_lost(gated):
    remote = RemotePredictor(gated.url, TOKEN, "tiny")
    context = ContextSet(name="blob").add(blob(0), [BOX])
    image_id = remote._volume(blob(0))
    job = {"model": "tiny", "target": image_id, "context": {"entries": [
        {"image": image_id, "boxes": [{"min": list(BOX.min), "max": list(BOX.max)}]}]}}
    accepted, refused = [], []
    for _ in range(8):
        status, headers, answer = raw(gated.url + "/v1/jobs", "POST", json.dumps(job).encode())
        if status == 202:
            accepted.append(answer["id"])
        else:
            assert status == 503 and int(headers["Retry-After"]) >= 1
            refused.append(answer["detail"])
    assert 2 <= len(accepted) <= 3 and len(refused) == 8 - len(accepted)   # 1 running + 2
    Gated.gate.set()
    for job_id in accepted:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, _, state = raw(gated.url + f"/v1/jobs/{job_id}?wait=1")
            if state["state"] == "done":
                break
        assert state["state"] == "done"
    expected = Predictor(gated.service.predictors["tiny"].network, "cpu",
                         precision="fp32").segment(blob(0), context).mask
    same(remote.segment(blob(0), context).mask, expected)


def test_cancel_from_the_client_stops_the_server_job(gated):
    remote = RemotePredictor(gated.url, TOKEN, "tiny")
    context = ContextSet(name="blob").add(blob(0), [BOX])
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 3          # after the uploads and a first status request

    with pytest.raises(Cancelled):
        remote.segment(blob(1), context, cancel=cancel)

    def interrupt() -> bool:                 # Ctrl-C while the client waits
        if len(gated.service._jobs) == 2:
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        remote.segment(blob(2), context, cancel=interrupt)
    Gated.gate.set()
    jobs = list(gated.service._jobs.values())
    assert len(jobs) == 2
    deadline = time.monotonic() + 30
    while not all(job.finished for job in jobs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [job.state for job in jobs] == ["cancelled", "cancelled"]


def test_a_status_request_waits_while_the_job_looks_as_the_client_last_saw_it(gated):
    remote = RemotePredictor(gated.url, TOKEN, "tiny")
    image_id = remote._volume(blob(0))
    job = gated.service.submit({"model": "tiny", "target": image_id, "context": {"entries": [
        {"image": image_id, "boxes": [{"min": list(BOX.min), "max": list(BOX.max)}]}]}})
    gated.service._update(job, state="running", progress=1 / 3)   # as 1 of 3 images done
    state, progress = job.observed()
    started = time.monotonic()
    answer = raw(gated.url + f"/v1/jobs/{job.id}?wait=0.5&seen_state={state}"
                 f"&seen_progress={progress}")[2]
    assert time.monotonic() - started >= 0.45 and answer["progress"] == progress
    Gated.gate.set()


def test_volume_store_forgets_idle_and_least_recently_used_volumes():
    now = [0.0]
    image = make_image(np.zeros((4, 4, 4), np.float32))          # 256 bytes
    store = VolumeStore(max_bytes=600, ttl_seconds=10, clock=lambda: now[0])
    first, second = store.add(image), store.add(image)
    store.get(first)                                              # first is now the newest
    third = store.add(image)
    assert len(store) == 2 and store.get(first) and store.get(third)
    with pytest.raises(Exception, match="unknown volume id"):
        store.get(second)
    now[0] = 11.0
    with pytest.raises(Exception, match="unknown volume id"):
        store.get(first)
