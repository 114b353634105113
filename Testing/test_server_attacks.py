"""`wsicl serve` attacked as a client (with or without the token) would attack it: each
finding of the server-hardening review as a test, on loopback only, every request loop
bounded in count and time. `Testing/README.md` lists the attacks and the answers expected.

Memory is measured on real `wsicl serve` processes as the growth of their peak resident
memory (VmHWM) across the attack.
"""
import gzip
import http.client
import json
import logging
import random
import re
import socket
import struct
import tempfile
import threading
import time
from typing import Tuple
from pathlib import Path

import pytest
import SimpleITK as sitk

from served import BOX, TOKEN, ServerProcess, blob, write_served_model, write_token
from test_server import Gated, InProcessServer, raw
from wsicl.cli import main
from wsicl.server.client import RemotePredictor, check_server
from wsicl.server.app import BoundedProtocol, HEADER_SECONDS, write_new_token
from wsicl.server.service import MAX_CONTEXT_ENTRIES, MAX_PROMPTS, Service

MB = 2 ** 20


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return write_served_model(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def server(model_file, tmp_path_factory):
    """A real `wsicl serve` with a token and a 64 MB volume cache."""
    running = ServerProcess("--port", "0", "--model", str(model_file), "--token-file",
                            str(write_token(tmp_path_factory.mktemp("token"))),
                            "--cache-mb", "64")
    yield running
    running.stop()


@pytest.fixture
def in_process(model_file, tmp_path):
    running = InProcessServer(Service({"tiny": Gated(str(model_file), "cpu",
                                                     precision="fp32")}, queue_size=2),
                              folder=tmp_path)
    Gated.gate = threading.Event()
    yield running
    Gated.gate.set()
    running.stop()


def upload(url: str, body: bytes, fmt: str, token: str = TOKEN):
    return raw(f"{url}/v1/volumes?format={fmt}", "POST", body, token,
               "application/octet-stream")


def nifti_header(size=(1, 1, 1), magic: bytes = b"n+1\x00") -> bytes:
    """A float32 NIfTI-1 header (with its 4-byte extension flag) declaring ``size``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "template.nii"
        sitk.WriteImage(sitk.Image([1, 1, 1], sitk.sitkFloat32), str(path))
        header = bytearray(path.read_bytes()[:352])
    header[40:56] = struct.pack("<8h", 3, *size, 1, 1, 1, 1)
    header[344:348] = magic
    return bytes(header)


# 1. Uploads that name other files on the server

def test_an_upload_cannot_make_the_server_read_another_file(server, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"\x07S3CRET")
    secret.chmod(0o600)
    attacks = {
        "mha": b"ObjectType = Image\nNDims = 3\nDimSize = 1 1 1\nElementType = MET_UCHAR\n"
               b"HeaderSize = 1\nElementDataFile = " + str(secret).encode() + b"\n",
        "nrrd": b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 1 1 1\nencoding: raw\n"
                b"data file: " + str(secret).encode() + b"\n\n",
    }
    attacks["nrrd2"] = attacks["nrrd"].replace(b"data file:", b"datafile:")
    attacks["mha2"] = attacks["mha"].replace(b"ElementDataFile", b"elementdatafile")
    for name, body in attacks.items():
        status, _, answer = upload(server.url, body, name.rstrip("2"))
        assert status == 422, (name, status, answer)
        assert "S3CRET" not in json.dumps(answer) and str(secret) not in json.dumps(answer)
    status, _, answer = upload(server.url, nifti_header(magic=b"ni1\x00") + bytes(4), "nii")
    assert status == 422 and "single-file NIfTI" in answer["detail"]


def test_a_self_contained_upload_of_each_format_is_still_accepted(server, tmp_path):
    image = blob(0)
    for fmt, compress in (("mha", True), ("mha", False), ("nrrd", True), ("nrrd", False),
                          ("nii", False), ("nii.gz", True)):
        path = tmp_path / f"volume.{fmt}"
        sitk.WriteImage(image, str(path), compress)
        status, _, answer = upload(server.url, path.read_bytes(), fmt)
        assert status == 201, (fmt, compress, answer)
        assert answer["size"] == list(image.GetSize())


def test_uploads_stream_into_private_files_with_random_names(in_process, tmp_path):
    seen = []

    def body():
        sitk.WriteImage(blob(0), str(tmp_path / "v.mha"), True)
        data = (tmp_path / "v.mha").read_bytes()
        yield data[:100]
        for _ in range(20):                     # the server holds the first part by now
            found = [p for p in tmp_path.iterdir() if p.suffix == ".mha" and p.name != "v.mha"]
            if found:
                seen.extend((p.name, p.stat().st_mode & 0o777) for p in found)
                break
            time.sleep(0.1)
        yield data[100:]

    connection = http.client.HTTPConnection("127.0.0.1", int(in_process.url.rsplit(":", 1)[1]),
                                            timeout=20)
    connection.request("POST", "/v1/volumes?format=mha", body(),
                       {"Authorization": f"Bearer {TOKEN}",
                        "Content-Type": "application/octet-stream"}, encode_chunked=True)
    assert connection.getresponse().status == 201
    connection.close()
    assert seen and all(re.fullmatch(r"[0-9a-f]{32}\.mha", name) and mode == 0o600
                        for name, mode in seen), seen


# 2. Tiny uploads that would allocate gigabytes

def test_a_header_declaring_more_than_the_cache_is_refused_before_any_voxel_is_read(server):
    before = server.peak_memory()
    for body, fmt in ((gzip.compress(nifti_header((600, 600, 500))), "nii.gz"),   # 720 MB
                      (b"ObjectType = Image\nNDims = 3\nDimSize = 400 400 400\n"   # 512 MB as
                       b"ElementType = MET_DOUBLE\nElementDataFile = LOCAL\n", "mha")):  # f64
        started = time.monotonic()
        status, _, answer = upload(server.url, body, fmt)
        assert status == 413 and "64 MB" in answer["detail"], answer
        assert time.monotonic() - started < 5
    assert server.peak_memory() - before < 32 * MB


def test_a_decompression_bomb_is_refused_at_its_declared_size(server, tmp_path):
    bomb = tmp_path / "bomb.nii.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as stream:    # declares 16 MB, holds 256
        stream.write(nifti_header((256, 256, 64)))
        zeros = bytes(4 * MB)
        for _ in range(64):
            stream.write(zeros)
    before = server.peak_memory()
    started = time.monotonic()
    status, _, answer = upload(server.url, bomb.read_bytes(), "nii.gz")
    assert status == 422 and "more than" in answer["detail"], answer
    assert time.monotonic() - started < 5
    assert server.peak_memory() - before < 32 * MB


def test_concurrent_hostile_uploads_stay_within_their_budget(server):
    body = gzip.compress(nifti_header((300, 300, 150)))           # 54 MB declared, 64 allowed
    before = server.peak_memory()
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(upload(server.url, body,
                                                                      "nii.gz")[0]))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == [422] * 3                                     # shorter than declared
    assert server.peak_memory() - before < 32 * MB


# 3. Bodies without Content-Length

def test_a_chunked_request_body_is_bounded_as_it_streams(server):
    before = server.peak_memory()
    host, port = server.url.rsplit("//", 1)[1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=20)
    chunk = b" " * MB

    def body():
        for _ in range(128):
            yield chunk

    try:
        connection.request("POST", "/v1/jobs", body(), {"Authorization": f"Bearer {TOKEN}",
                                                        "Content-Type": "application/json"},
                           encode_chunked=True)
        status = connection.getresponse().status
    except (BrokenPipeError, ConnectionResetError):
        status = 413                        # the server answered and closed mid-body
    finally:
        connection.close()
    assert status == 413
    assert server.peak_memory() - before < 32 * MB


# 4. Connections that never finish their headers

class Tight(BoundedProtocol):
    cap = 8
    header_seconds = 1.0


def test_idle_and_slow_header_connections_are_capped_and_cut_off(model_file, tmp_path,
                                                                 caplog):
    running = InProcessServer(Service({"tiny": Gated(str(model_file), "cpu",
                                                     precision="fp32")}),
                              folder=tmp_path, protocol=Tight)
    try:
        port = int(running.url.rsplit(":", 1)[1])
        caplog.set_level(logging.INFO)
        sockets = []
        for index in range(20):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n" if index % 2 else b"")
            sockets.append(sock)
        time.sleep(0.3)
        assert len(running.server.server_state.connections) <= Tight.cap
        time.sleep(Tight.header_seconds + 0.7)
        assert len(running.server.server_state.connections) == 0
        for sock in sockets:                    # each was closed by the server
            sock.settimeout(2)
            try:
                assert sock.recv(1024) == b""
            except ConnectionResetError:
                pass
            sock.close()
        assert raw(running.url + "/v1/health")[0] == 200
        assert len(caplog.records) < 5
    finally:
        running.stop()


def test_wsicl_serve_closes_a_connection_that_sends_nothing(server):
    host, port = server.url.rsplit("//", 1)[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=HEADER_SECONDS + 5)
    started = time.monotonic()
    try:
        assert sock.recv(1024) == b""
    except ConnectionResetError:
        pass
    sock.close()
    assert HEADER_SECONDS - 1 < time.monotonic() - started < HEADER_SECONDS + 4


def stalled_connections(url: str, request: bytes, count: int) -> list:
    """``count`` connections that each send ``request`` (headers promising a body) and then
    nothing more."""
    host, port = url.rsplit("//", 1)[1].split(":")
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(request)
        sockets.append(sock)
    return sockets


def read_until_closed(sock: socket.socket, within_s: float) -> Tuple[bytes, bool]:
    """What the server sent on ``sock`` and whether it closed the connection within
    ``within_s`` (an abort, which may drop an answer not yet read, counts as closed)."""
    sock.settimeout(within_s)
    deadline = time.monotonic() + within_s
    received = b""
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if chunk == b"":
                return received, True
            received += chunk
    except ConnectionResetError:
        return received, True
    except socket.timeout:
        return received, False
    finally:
        sock.close()
    return received, False


def test_stalled_bodies_never_lock_out_a_token_holder(server):
    """70 connections that promise a body and send none, to the page (no token needed) and
    to the API with the token (the worst case): a token holder's request is answered within
    2 s the whole time, the page's are refused at once (its paths take no body), and the
    server closes the stalled bodies within two body checks. The connections exceed the cap
    (64): the few that wait longest for their client may be closed unanswered to make room,
    which on a slow machine can include page connections not yet refused."""
    from wsicl.server.app import BODY_CHECK_SECONDS
    page = stalled_connections(server.url, b"GET / HTTP/1.1\r\nHost: localhost\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n1\r\n", 35)
    api = stalled_connections(server.url, b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\n"
                              b"Authorization: Bearer " + TOKEN.encode() +
                              b"\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 100000\r\n\r\n{", 35)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 2 * BODY_CHECK_SECONDS:
            asked = time.monotonic()
            status = raw(server.url + "/v1/info")[0]
            assert status == 200 and time.monotonic() - asked < 2.0
            time.sleep(0.5)
        within = 2 * BODY_CHECK_SECONDS + 2
        page_ends = [read_until_closed(sock, within) for sock in page]
        api_ends = [read_until_closed(sock, within) for sock in api]
        assert all(closed for _, closed in page_ends + api_ends)
        answers = [answer for answer, _ in page_ends if answer]
        assert len(answers) >= len(page) - (len(page) + len(api) + 1 - 64)
        assert all(answer.startswith(b"HTTP/1.1 400") and b"takes no request body" in answer
                   for answer in answers)
        assert not any(answer for answer, _ in api_ends)     # closed, never answered
    finally:
        for sock in page + api:
            sock.close()


def test_public_paths_take_no_body(server):
    for request in (b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
                    b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"):
        (sock,) = stalled_connections(server.url, request, 1)
        assert sock.recv(1024).startswith(b"HTTP/1.1 400")
        sock.close()
    assert raw(server.url + "/v1/health", token="")[0] == 200


# 5. Long polls, caps and types

def test_long_polls_never_hold_up_other_requests(in_process):
    image_id = RemotePredictor(in_process.url, TOKEN, "tiny")._volume(blob(0))
    job = in_process.service.submit({"model": "tiny", "target": image_id, "context": {
        "entries": [{"image": image_id, "boxes": [{"min": list(BOX.min),
                                                   "max": list(BOX.max)}]}]}})
    pollers = [threading.Thread(target=raw, args=(f"{in_process.url}/v1/jobs/{job.id}?wait=30",),
                                daemon=True) for _ in range(45)]
    for poller in pollers:
        poller.start()
    time.sleep(1.0)
    started = time.monotonic()
    assert raw(in_process.url + "/v1/health")[0] == 200
    assert raw(in_process.url + "/v1/info")[0] == 200
    assert time.monotonic() - started < 2.0
    Gated.gate.set()
    for poller in pollers:
        poller.join(30)


def test_malformed_jobs_are_refused_with_422_never_500(in_process):
    image_id = RemotePredictor(in_process.url, TOKEN, "tiny")._volume(blob(0))
    box = {"min": list(BOX.min), "max": list(BOX.max)}
    entry = {"image": image_id, "boxes": [box]}
    valid = {"model": "tiny", "target": image_id, "context": {"entries": [entry]}}
    cases = [
        {**valid, "model": ["tiny"]}, {**valid, "model": {"a": 1}}, {**valid, "model": 7},
        {**valid, "name": {"x": 1}}, {**valid, "mode": 3},
        {**valid, "context": {"entries": [{**entry, "boxes": [
            {"min": [int("9" * 4000), 1, 1], "max": [5, 5, 5]}]}]}},
        {**valid, "context": {"entries": [entry] * (MAX_CONTEXT_ENTRIES + 1)}},
        {**valid, "context": {"entries": [{**entry, "boxes": [box] * (MAX_PROMPTS + 1)}]}},
        {**valid, "context": {"entries": [{**entry, "name": ["x"]}]}},
        {**valid, "context": {"name": 5, "entries": [entry]}},
    ]
    rng = random.Random(0)
    strange = [None, True, -1, 1e308, "x" * 600, [], {}, [[]], [None], {"min": None},
               [1, 2], "\n", [{"min": "a", "max": "b"}]]
    paths = [("model",), ("target",), ("mode",), ("name",), ("refine",), ("prompt_kinds",),
             ("boxes",), ("context",), ("context", "entries"), ("context", "name")]
    for _ in range(60):
        job = json.loads(json.dumps(valid))
        *parents, key = rng.choice(paths)
        holder = job
        for parent in parents:
            holder = holder[parent]
        holder[key] = rng.choice(strange)
        cases.append(job)
    for case in cases:                  # well-formed ones queue (202) or find it full (503)
        status, _, answer = raw(in_process.url + "/v1/jobs", "POST", json.dumps(case).encode())
        assert status in (202, 404, 422, 503), (case, status, answer)
    Gated.gate.set()


# 6. Logs, error texts, /v1/info, the token and the Host header

def test_client_strings_cannot_forge_log_lines(server):
    remote = RemotePredictor(server.url, TOKEN, "tiny")
    remote.segment_interactive(blob(0), [BOX], name="case7\n00:00:00 job FORGED: done")
    deadline = time.monotonic() + 10
    while not any("case7" in line for line in server.output) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any("case7" in line for line in server.output)
    assert not any(line.startswith("00:00:00 job FORGED") for line in server.output)


def test_errors_name_no_server_path_or_address_and_info_names_no_path(server):
    broken = bytearray(nifti_header() + bytes(4))
    broken[70:72] = struct.pack("<h", 9999)                         # an unknown data type
    status, _, answer = upload(server.url, bytes(broken), "nii")
    assert status == 422 and "uploaded volume" in answer["detail"]
    assert not re.search(r"0x[0-9a-f]{6,}|/tmp|wsicl-serve", answer["detail"]), answer
    info = raw(server.url + "/v1/info")[2]
    assert info["models"]["tiny"]["source"] == "tiny.pt" and "/" not in json.dumps(info)


def test_serve_refuses_weak_or_exposed_token_files(model_file, tmp_path, capsys):
    exposed = write_token(tmp_path)
    exposed.chmod(0o644)
    assert main(["serve", "--port", "0", "--model", str(model_file), "--token-file",
                 str(exposed)]) == 1
    assert f"chmod 600 {exposed}" in capsys.readouterr().err
    (tmp_path / "short").mkdir()
    short = write_token(tmp_path / "short", "abc")
    assert main(["serve", "--port", "0", "--model", str(model_file), "--token-file",
                 str(short)]) == 1
    assert "at least 32" in capsys.readouterr().err
    token = write_new_token(tmp_path / "new")
    assert len(token) >= 32 and (tmp_path / "new").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "new").read_text().strip() == token
    assert main(["serve", "--port", "0", "--model", str(model_file), "--new-token",
                 str(tmp_path / "new")]) == 1
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "new").read_text().strip() == token          # never overwritten


def test_bearer_is_case_insensitive_and_tokens_are_utf8_on_both_sides(model_file, tmp_path):
    token = "tökén-" + "ß" * 30
    running = InProcessServer(Service({"tiny": Gated(str(model_file), "cpu",
                                                     precision="fp32")}),
                              token=token, folder=tmp_path)
    try:
        assert "tiny" in check_server(running.url, token)
        request = http.client.HTTPConnection("127.0.0.1", int(running.url.rsplit(":", 1)[1]),
                                             timeout=10)
        request.request("GET", "/v1/info", headers={
            "Authorization": f"bEaReR {token}".encode("utf-8")})
        assert request.getresponse().status == 200
        request.close()
    finally:
        running.stop()


def test_a_loopback_server_answers_only_requests_addressed_to_loopback(server):
    port = server.url.rsplit(":", 1)[1]

    def with_host(host: str) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
        connection.putrequest("GET", "/v1/info", skip_host=True)
        connection.putheader("Host", host)
        connection.putheader("Authorization", f"Bearer {TOKEN}")
        connection.endheaders()
        status = connection.getresponse().status
        connection.close()
        return status

    assert with_host("attacker.example:8000") == 421
    assert with_host("127.0.0.1.attacker.example") == 421
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost:9999", "[::1]:80"):
        assert with_host(host) == 200, host


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_stop_signal_ends_the_server_cleanly_and_removes_its_folder(model_file, tmp_path,
                                                                     stop):
    """kill or a service manager (SIGTERM), Ctrl-C (SIGINT) and a closed terminal or SSH
    session (SIGHUP) each stop the server with exit status 0 and no upload folder left."""
    import os
    import signal
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    running = ServerProcess("--port", "0", "--model", str(model_file),
                            env={**os.environ, "TMPDIR": str(temporary)})
    assert [p.name for p in temporary.iterdir() if p.name.startswith("wsicl-serve-")]
    running.process.send_signal(getattr(signal, stop))
    assert running.process.wait(20) == 0, "".join(running.output)
    assert not [p for p in temporary.iterdir() if p.name.startswith("wsicl-serve-")]


# 9. The browser page

def test_the_page_is_public_but_only_its_own_files_and_never_the_api(server):
    """The page's files load without a token (they hold no data), each with a strict CSP;
    nothing else does: not another file, not a path that climbs out, not the API, not a
    POST to the page; and a query cannot change what the page says."""
    from wsicl.server.page import PAGE_FILES, WEB_FOLDER
    for path, (name, media_type) in PAGE_FILES.items():
        status, headers, body = raw(server.url + path, token="")
        assert status == 200 and headers["Content-Type"] == media_type, path
        assert body == (WEB_FOLDER / name).read_bytes()
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/web/../page.py", "/web/%2e%2e/page.py", "/web/index.html", "/v1/info",
                 "/openapi.json", "/web/app.js/"):
        assert raw(server.url + path, token="")[0] == 401, path
    assert raw(server.url + "/", "POST", b"{}", token="")[0] == 401
    status, _, body = raw(server.url + "/?body=<script>alert(1)</script>&media_type=x",
                          token="")
    assert status == 200 and b"alert(1)" not in body


# 10. The second round: memory, text, origins, geometry

def rss(server: ServerProcess) -> int:
    """The server process's resident memory now (VmRSS), in bytes."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1]) * 1024


def nrrd(size=(1, 1, 1), extra: bytes = b"", spacing=b"1 1 1", origin=b"0 0 0",
         voxels: bytes = None) -> bytes:
    """A raw uint8 NRRD of ``size`` with ``extra`` header lines."""
    count = size[0] * size[1] * size[2]
    return (b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: " +
            b" ".join(str(n).encode() for n in size) + b"\nspace: left-posterior-superior\n"
            b"space directions: (" + spacing.split()[0] + b",0,0) (0," + spacing.split()[1] +
            b",0) (0,0," + spacing.split()[2] + b")\nspace origin: (" +
            origin.replace(b" ", b",") + b")\nencoding: raw\n" + extra + b"\n" +
            (voxels if voxels is not None else bytes(count)))


def interactive_job(url: str, volume: str, name: str = "t") -> tuple:
    job = {"model": "tiny", "mode": "interactive", "target": volume, "name": name,
           "boxes": [{"min": [2, 2, 2], "max": [8, 8, 2]}]}
    return raw(f"{url}/v1/jobs?wait=30", "POST", json.dumps(job).encode())


def test_finished_jobs_let_go_of_their_images(model_file, tmp_path):
    """64 jobs on 2 MB volumes under --cache-mb 48: the server's memory grows by at most the
    budget and a little (before, every finished job kept its volume: 128 MB)."""
    running = ServerProcess("--port", "0", "--model", str(model_file), "--token-file",
                            str(write_token(tmp_path)), "--cache-mb", "48")
    try:
        size = (200, 100, 100)
        status, _, answer = upload(running.url, nrrd(size), "nrrd")
        assert interactive_job(running.url, answer["id"])[0] == 202
        before = rss(running)
        for seed in range(64):
            voxels = bytes([seed + 1]) * (size[0] * size[1] * size[2])
            status, _, answer = upload(running.url, nrrd(size, voxels=voxels), "nrrd")
            assert status == 201
            status, _, state = interactive_job(running.url, answer["id"])
            assert status == 202 and state["state"] in ("done", "failed"), state
        assert rss(running) - before < 48 * MB + 24 * MB
    finally:
        running.stop()


def test_a_finished_job_holds_no_image(in_process):
    Gated.gate.set()
    service = in_process.service
    volume = service.volumes.add(blob(0))
    job = service.submit({"model": "tiny", "mode": "interactive", "target": volume,
                          "boxes": [{"min": list(BOX.min), "max": list(BOX.max)}]})
    deadline = time.monotonic() + 30
    while not job.finished and time.monotonic() < deadline:
        time.sleep(0.02)
    assert job.state == "done" and job.result is not None
    assert job.target is None and job.interactive_entry is None and job.context is None
    assert service._held_images() == []


def test_a_job_that_would_outgrow_the_budget_is_refused_at_submission(model_file, tmp_path):
    from wsicl.server.service import JOB_BYTES_PER_VOXEL
    running = ServerProcess("--port", "0", "--model", str(model_file), "--token-file",
                            str(write_token(tmp_path)), "--cache-mb", "64")
    try:
        status, _, answer = upload(running.url, nrrd((300, 300, 100)), "nrrd")   # 9 MB: kept
        assert status == 201
        status, _, answer = interactive_job(running.url, answer["id"])
        assert status == 413, answer
        need = 300 * 300 * 100 * JOB_BYTES_PER_VOXEL / MB
        assert f"about {need:,.0f} MB while it runs" in answer["detail"]
        assert "--cache-mb" in answer["detail"]
    finally:
        running.stop()


def test_an_accepted_large_volume_stays_within_the_memory_it_was_admitted_by(model_file,
                                                                              tmp_path):
    """A 16-million-voxel uint8 volume (the size JOB_BYTES_PER_VOXEL was measured on): its
    interactive job's peak (VmHWM growth) stays under what admission reserves for it (16
    bytes per voxel and more before, for the float probability image and its copies).

    Not smaller: the growth also holds a fixed part, memory glibc keeps for the job's
    thread, about 50 MB or nothing depending on which heap that thread draws (a 4-million-
    voxel volume grew by 54 or 104 MB from one run to the next; this one by 138 MB every
    time in eight runs), which would decide a small volume's result by chance."""
    from wsicl.server.service import JOB_BYTES_PER_VOXEL
    running = ServerProcess("--port", "0", "--model", str(model_file), "--token-file",
                            str(write_token(tmp_path)), "--cache-mb", "400")
    try:
        size = (400, 400, 100)
        warm = upload(running.url, nrrd((20, 20, 10)), "nrrd")[2]["id"]
        assert interactive_job(running.url, warm)[0] == 202            # the network loaded
        status, _, answer = upload(running.url, nrrd(size, voxels=bytes(range(200)) * 80000),
                                   "nrrd")
        assert status == 201
        before = running.peak_memory()
        status, _, state = interactive_job(running.url, answer["id"])
        assert status == 202 and state["state"] == "done", state
        grown = running.peak_memory() - before
        assert grown < JOB_BYTES_PER_VOXEL * size[0] * size[1] * size[2], grown
    finally:
        running.stop()


def test_tiny_uploads_with_huge_headers_keep_no_metadata_and_are_counted(model_file, tmp_path):
    """300 one-voxel NRRDs with 61 kB of key/value lines each: no header line is kept, and
    past MAX_VOLUMES the oldest volumes go (their ids are then unknown)."""
    from wsicl.server.service import MAX_VOLUMES
    running = ServerProcess("--port", "0", "--model", str(model_file), "--token-file",
                            str(write_token(tmp_path)))
    try:
        extra = b"".join(b"key%d:=%s\n" % (n, b"v" * 60) for n in range(900))
        ids = [upload(running.url, nrrd(extra=extra), "nrrd")[2]["id"] for _ in range(20)]
        before = rss(running)
        ids += [upload(running.url, nrrd(extra=extra), "nrrd")[2]["id"] for _ in range(280)]
        assert rss(running) - before < 8 * MB
        assert len(ids) > MAX_VOLUMES
        status, _, answer = interactive_job(running.url, ids[0])
        assert status == 404 and "upload the volume again" in answer["detail"]
        assert interactive_job(running.url, ids[-1])[0] == 202
    finally:
        running.stop()


def test_lone_surrogates_in_names_are_refused_not_500(server):
    status, _, answer = upload(server.url, nrrd((10, 10, 3)), "nrrd")
    volume = answer["id"]
    for document in (
            b'{"model": "tiny", "mode": "interactive", "target": "%s", "name": "\\ud800",'
            b' "boxes": [{"min": [500, 500, 1], "max": [600, 600, 1]}]}' % volume.encode(),
            b'{"model": "tiny", "target": "%s", "context": {"name": "\\udc00", "entries": '
            b'[{"image": "%s", "boxes": [{"min": [1, 1, 1], "max": [5, 5, 1]}]}]}}'
            % (volume.encode(), volume.encode())):
        status, _, answer = raw(server.url + "/v1/jobs", "POST", document)
        assert status == 422 and "lone UTF-16 surrogate" in answer["detail"], answer
    assert not any("Traceback" in line for line in server.output)


def test_other_origins_and_untyped_uploads_are_refused(model_file):
    """A page of another origin, or a file:// page, cannot use a server without a token:
    neither through Origin nor Sec-Fetch-Site; an upload must say it is a file."""
    running = ServerProcess("--port", "0", "--model", str(model_file))       # no token
    try:
        body = nrrd((4, 4, 4))
        own = running.url.split("//", 1)[1]
        for headers in ({"Origin": "http://attacker.example"}, {"Origin": "null"},
                        {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                        {"Origin": f"http://{own}.attacker.example"}):
            status, _, answer = raw(running.url + "/v1/volumes?format=nrrd", "POST", body,
                                    token="", headers=headers)
            assert status == 403 and "another web origin" in answer["detail"], headers
            assert raw(running.url + "/v1/info", token="", headers=headers)[0] == 403
        status, _, answer = raw(running.url + "/v1/volumes?format=nrrd", "POST", body,
                                token="", content_type="text/plain")
        assert status == 415 and "application/octet-stream" in answer["detail"]
        for headers in ({"Origin": f"http://{own}", "Sec-Fetch-Site": "same-origin"}, {}):
            status, _, _ = raw(running.url + "/v1/volumes?format=nrrd", "POST", body,
                               token="", headers=headers)
            assert status == 201, headers
        assert raw(running.url + "/", token="", headers={"Sec-Fetch-Site": "cross-site"}
                   )[0] == 200                  # a link to the page from elsewhere opens it
    finally:
        running.stop()


def test_absurd_geometry_is_refused_at_upload_and_on_the_command_line(server, tmp_path,
                                                                      capsys):
    for spacing, origin, what in ((b"1e-20 1 1", b"0 0 0", "voxel spacing"),
                                  (b"1 1e20 1", b"0 0 0", "voxel spacing"),
                                  (b"1 1 1", b"1e300 0 0", "origin")):
        body = nrrd((4, 4, 4), spacing=spacing, origin=origin)
        status, _, answer = upload(server.url, body, "nrrd")
        assert status == 422 and what in answer["detail"], answer
        (tmp_path / "odd.nrrd").write_bytes(body)
        (tmp_path / "set.json").write_text(json.dumps({"context": [
            {"image": "odd.nrrd", "boxes": [{"min": [0, 0, 1], "max": [2, 2, 1]}]}]}))
        assert main(["segment", str(tmp_path / "odd.nrrd"), "--context-set",
                     str(tmp_path / "set.json"), "--output-dir", str(tmp_path / "out"),
                     "--quiet"]) == 1
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and what in error and "corrupt" in error, error
