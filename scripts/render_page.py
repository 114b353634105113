"""Renders the browser page for the README after a scripted use of it.

Usage: ``python scripts/render_page.py OUT.png`` (needs Debian's chromium and
chromium-driver, and selenium from the test extra).

Starts ``wsicl serve`` on loopback with the bundled box model, opens the page in headless
Chromium, types the token, opens the sample CT and MR, imports the demo's liver context
set (its voxel boxes written in RAS millimetres, the page's format) with the page's
Import button, segments the MR, turns on interactive mode on the CT (its boxes segment the
CT itself) and saves the page showing the CT's boxes and result.
"""
import argparse
import json
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "Testing")]


def ras_boxes(image, boxes) -> list:
    """Voxel boxes (i, j, k inclusive) of ``image`` as RAS millimetre boxes."""
    import numpy as np
    converted = []
    for box in boxes:
        corners = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
                   for corner in (box["min"], box["max"])]
        ras = np.array(corners) * [-1, -1, 1]
        converted.append({"min": ras.min(0).tolist(), "max": ras.max(0).tolist()})
    return converted


def main(output: Path) -> None:
    import SimpleITK as sitk
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from served import ServerProcess
    from test_browser import CHROMIUM_FLAGS
    from wsicl.cli import main as wsicl
    work = Path(tempfile.mkdtemp(prefix="wsicl-page-"))
    wsicl(["demo", "--output-dir", str(work / "demo"), "--quiet", "--device", "cpu"])
    liver = json.loads((work / "demo" / "context_liver.json").read_text())
    for entry in liver["context"]:
        image = sitk.ReadImage(str(work / "demo" / entry["image"]))
        entry["boxes"] = ras_boxes(image, entry["boxes"])
    liver.update(coordinates="RAS", colour="#e64d33")
    (work / "liver.json").write_text(json.dumps(liver))
    token_file = work / "token"
    token_file.write_text(secrets.token_urlsafe(32))
    token_file.chmod(0o600)
    server = ServerProcess("--port", "0", "--model", "box", "--token-file", str(token_file))
    options = Options()
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={work / 'profile'}"]:
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    wait = WebDriverWait(driver, 300)
    try:
        driver.get(server.url + "/")
        wait.until(lambda d: d.execute_script("return Boolean(window.wsicl)"))
        driver.find_element(By.ID, "tokenInput").send_keys(token_file.read_text())
        driver.find_element(By.ID, "tokenButton").click()
        wait.until(lambda d: d.find_element(By.ID, "workspace").is_displayed())
        driver.find_element(By.ID, "fileInput").send_keys(
            f"{work / 'demo' / 'example_ct_sm.nii.gz'}\n{work / 'demo' / 'example_mr_sm.nii.gz'}")
        wait.until(lambda d: d.execute_script("return window.wsicl.state.volumes.length") == 2)
        driver.find_element(By.ID, "importInput").send_keys(str(work / "liver.json"))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#promptList li"))
        driver.find_elements(By.CSS_SELECTOR, "#volumeList .name")[1].click()
        driver.find_element(By.ID, "segmentButton").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith(("Done", "Fail"))
                   or d.find_element(By.ID, "segmentError").text)
        if not driver.find_element(By.ID, "status").text.startswith("Done"):
            raise SystemExit(f"the scripted run failed: "
                             f"{driver.find_element(By.ID, 'segmentError').text}")
        driver.find_elements(By.CSS_SELECTOR, "#volumeList .name")[0].click()  # the CT:
        driver.find_element(By.ID, "interactiveBox").click()     # its boxes and, from them,
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith(     # its liver
            "Done") and "(interactive)" not in d.find_element(By.ID, "status").text and
            d.execute_script("return window.wsicl.state.volumes[0].results.liver"))
        driver.find_elements(By.CSS_SELECTOR, "#promptList .name")[2].click()  # its slice
        driver.set_window_size(1400, 1000)
        driver.save_screenshot(str(output))
        print(f"wrote {output}")
    finally:
        driver.quit()
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="the PNG to write")
    main(parser.parse_args().output)
