"""A `wsicl serve` process for tests, and a tiny model worth serving (loopback only;
every wait bounded)."""
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from conftest import make_image, sphere_volume
from wsicl import Box, ContextSet, Predictor
from wsicl.checkpoints import ModelInfo, build_model, save_model

TOKEN = "test-token-7f3a9c1e5b-0d2e4f6a8b1c3d5e"
BOX = Box((12, 10, 12), (28, 26, 12))


def write_token(folder: Path, token: str = TOKEN) -> Path:
    """A token file as `wsicl serve` accepts it (private to its owner) in ``folder``."""
    path = Path(folder) / "token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def blob(seed: int = 0, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    """A 40x36x24 anisotropic image with a bright ball and noise drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    ball = sphere_volume((24, 36, 40), (12, 18, 20), 9.0, (0.9, 0.9, 1.5))
    array = (ball * 100.0 + rng.normal(0, 5, ball.shape)).astype(np.float32)
    return make_image(array, (0.9, 0.9, 1.5), (-10.0, 20.0, 5.0), direction)


def write_served_model(path: Path) -> Path:
    """A tiny random network whose output bias puts about half of the blob in the mask, so
    that comparing masks can fail; saved to ``path``."""
    torch.manual_seed(0)
    network = build_model(ModelInfo(channels=[4, 8, 16], input_size=32, prompt_kinds=["box"],
                                    source="tiny served network"))
    image = blob()
    context = ContextSet(name="blob").add(image, [BOX])
    output = sitk.GetArrayFromImage(Predictor(network, "cpu", precision="fp32", refine=False)
                                    .segment(image, context).probability)
    with torch.no_grad():
        network.target_decoder.output_block.block[1].bias += 0.5 - float(np.median(output))
    save_model(network, path, network.metadata)
    return path

class ServerProcess:
    """`wsicl serve` in a child process; ``url`` once it said it listens (60 s at most);
    ``output`` collects its lines as they come."""

    def __init__(self, *arguments: str, env: dict = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wsicl.cli", "serve", "--device", "cpu",
             "--precision", "fp32", *arguments],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.output: list = []
        lines: "queue.Queue[str]" = queue.Queue()

        def collect() -> None:
            for line in self.process.stdout:
                self.output.append(line)
                lines.put(line)

        threading.Thread(target=collect, daemon=True).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line.startswith("listening on "):
                self.url = line.split()[-1]
                return
        self.stop()
        raise AssertionError(f"server did not start: {''.join(self.output)}")

    def stop(self) -> None:
        """Stops the server as a service manager would (SIGTERM), killing it if it has not
        finished within 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait(10)

    def peak_memory(self) -> int:
        """The process's peak resident memory so far (VmHWM), in bytes."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) * 1024
