"""The browser page of ``wsicl serve`` in a real Chromium: Debian's ``chromium`` and
``chromium-driver`` (``.ci/run`` installs them), headless, WebGL2 through SwiftShader,
driven by Selenium; a ``wsicl serve`` on loopback with a tiny model, started here.

The page is used as a user would: token typed, two volumes opened through the file input,
a box dragged on a slice (mouse events on the canvas), the other volume segmented; its
overlay must hold the voxels the Python client gets for the same request, and the
downloaded mask the same again."""
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

webdriver = pytest.importorskip("selenium.webdriver")
if not (shutil.which("chromium") and shutil.which("chromedriver")):
    pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs "
                "them)", allow_module_level=True)

from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from served import TOKEN, ServerProcess, blob, write_served_model, write_token  # noqa: E402
from wsicl import Box, ContextSet  # noqa: E402
from wsicl.confidence import calibration  # noqa: E402
from wsicl.server.client import RemotePredictor  # noqa: E402

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--use-angle=swiftshader",
                  "--enable-unsafe-swiftshader", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-quic", "--window-size=1400,900"]
"""Headless, WebGL2 in software, and no connection but to the page's own server."""


@pytest.fixture
def served(tmp_path):
    """A loopback ``wsicl serve`` (tiny model ``tiny``, a token) and two volumes."""
    model = write_served_model(tmp_path / "tiny.pt")
    for seed, name in ((0, "context.nii.gz"), (3, "target.nii.gz")):
        sitk.WriteImage(blob(seed), str(tmp_path / name))
    server = ServerProcess("--port", "0", "--model", str(model), "--token-file",
                           str(write_token(tmp_path)))
    yield server, tmp_path
    server.stop()


@pytest.fixture
def browser(tmp_path):
    options = Options()
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    (tmp_path / "downloads").mkdir()
    options.add_experimental_option("prefs", {
        "download.default_directory": str(tmp_path / "downloads"),
        "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout_s: float = 60.0):
    try:
        return WebDriverWait(driver, timeout_s).until(lambda d: condition(d))
    except TimeoutException:
        raise AssertionError(f"not reached in {timeout_s} s; status: "
                             f"{driver.find_element(By.ID, 'status').text!r}, errors: "
                             f"{[e.text for e in driver.find_elements(By.CLASS_NAME, 'error')]}")


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def open_page(driver, url: str, token: str) -> None:
    driver.get(url + "/")
    wait_for(driver, lambda d: d.execute_script("return Boolean(window.wsicl)"))
    driver.find_element(By.ID, "tokenInput").send_keys(token)
    driver.find_element(By.ID, "tokenButton").click()


def open_volumes(driver, folder: Path) -> None:
    wait_for(driver, lambda d: d.find_element(By.ID, "workspace").is_displayed())
    driver.find_element(By.ID, "fileInput").send_keys(
        f"{folder / 'context.nii.gz'}\n{folder / 'target.nii.gz'}")
    wait_for(driver, lambda d: d.execute_script("return window.wsicl.state.volumes.length") == 2)


def draw_box(driver) -> None:
    """A drag across the middle of the axial view of the shown volume."""
    Select(driver.find_element(By.ID, "viewSelect")).select_by_value("axial")
    canvas = driver.find_element(By.ID, "viewer")
    width, height = canvas.size["width"], canvas.size["height"]
    step = (int(width * 0.05), int(height * 0.05))
    ActionChains(driver).move_to_element_with_offset(canvas, -2 * step[0], -2 * step[1]) \
        .click_and_hold().move_by_offset(*step).move_by_offset(*step).move_by_offset(*step) \
        .release().perform()


def exported(driver) -> dict:
    return json.loads(driver.execute_script(
        "return JSON.stringify(window.wsicl.exportSet(window.wsicl.currentSet()))"))


def test_the_page_segments_a_target_as_the_python_client_does(served, browser):
    server, folder = served
    open_page(browser, server.url, TOKEN)
    open_volumes(browser, folder)
    browser.find_element(By.ID, "setName").clear()
    browser.find_element(By.ID, "setName").send_keys("core")
    browser.find_element(By.ID, "newSetButton").click()
    draw_box(browser)
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#promptList li")) == 1)
    document = exported(browser)
    ((entry,),) = [document["context"]]
    ((low, high),) = [(b["min"], b["max"]) for b in entry["boxes"]]
    assert entry["image"] == "context.nii.gz" and document["coordinates"] == "RAS"
    assert sum(a != b for a, b in zip(low, high)) == 2                # a 2D box on a slice
    browser.find_elements(By.CSS_SELECTOR, "#volumeList .name")[1].click()   # the target
    browser.find_element(By.ID, "segmentButton").click()
    wait_for(browser, lambda d: text(d, "status").startswith("Done"))
    overlay = np.array(browser.execute_script(
        "return Array.from(window.wsicl.state.volumes[1].results['core'].img)"))
    context = ContextSet(name="core").add(sitk.ReadImage(str(folder / "context.nii.gz")),
                                          [Box(tuple(low), tuple(high), "RAS")])
    remote = RemotePredictor(server.url, TOKEN, "tiny").segment(
        sitk.ReadImage(str(folder / "target.nii.gz")), context)
    expected = sitk.GetArrayFromImage(remote.mask)
    assert 0 < expected.sum() < expected.size
    assert np.array_equal(overlay, expected.ravel())                  # voxel for voxel
    judged = browser.execute_script("return window.wsicl.state.volumes[1].judged['core']")
    confidence = round(calibration().confidence(remote.evidence), 3)
    assert judged == {"confidence": confidence, "review": calibration().review(confidence)}
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#volumeList .name")]
    assert names[1].startswith(f"target.nii.gz ● {confidence:.2f}") and \
        names[1].endswith("⚑ to review") == judged["review"]
    browser.find_element(By.ID, "downloadButton").click()
    download = folder / "downloads" / "target_core.nii.gz"
    wait_for(browser, lambda d: download.exists() and download.stat().st_size > 0)
    time.sleep(0.5)
    saved = sitk.ReadImage(str(download))
    assert np.array_equal(sitk.GetArrayFromImage(saved).astype(np.uint8), expected)
    assert np.allclose(saved.GetOrigin(), sitk.ReadImage(str(folder / "target.nii.gz"))
                       .GetOrigin(), atol=1e-4)
    Select(browser.find_element(By.ID, "downloadFormat")).select_by_value("seg.nrrd")
    browser.find_element(By.ID, "downloadButton").click()             # for 3D Slicer
    segmentation = folder / "downloads" / "target.seg.nrrd"
    wait_for(browser, lambda d: segmentation.exists() and segmentation.stat().st_size > 0)
    time.sleep(0.5)
    segments = sitk.ReadImage(str(segmentation))
    target = sitk.ReadImage(str(folder / "target.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(segments), expected)   # label 1: core
    for read, wanted in ((segments.GetOrigin(), target.GetOrigin()),
                         (segments.GetSpacing(), target.GetSpacing()),
                         (segments.GetDirection(), target.GetDirection())):
        assert np.allclose(read, wanted, atol=1e-4)
    assert segments.GetMetaData("Segment0_Name") == "core"
    assert segments.GetMetaData("Segment0_LabelValue") == "1"
    assert np.allclose([float(c) for c in segments.GetMetaData("Segment0_Color").split()],
                       [0xe6 / 255, 0x4d / 255, 0x33 / 255], atol=1e-3)
    browser.find_element(By.ID, "undoButton").click()
    assert browser.execute_script("return Object.keys(window.wsicl.state.volumes[1].results)"
                                  ) == []
    assert browser.execute_script("return Object.keys(window.wsicl.state.volumes[1].judged)"
                                  ) == []
    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []                            # no CSP violation, no failed request
    browser.execute_script(                  # as if the server had forgotten the volumes
        "window.wsicl.state.volumes.forEach(v => { v.serverId = 'forgotten'; })")
    browser.find_element(By.ID, "segmentButton").click()
    wait_for(browser, lambda d: text(d, "status").startswith("Done"))
    assert np.array_equal(np.array(browser.execute_script(
        "return Array.from(window.wsicl.state.volumes[1].results['core'].img)")),
        expected.ravel())                                           # uploaded again
    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert len(severe) == 1 and "/v1/jobs" in severe[0] and "404" in severe[0]


def test_a_wrong_token_is_one_sentence_beside_the_field_and_shows_nothing(served, browser):
    server, _ = served
    open_page(browser, server.url, "not-the-token-" + "x" * 30)
    wait_for(browser, lambda d: text(d, "tokenError"))
    assert text(browser, "tokenError") == \
        "The server refused the token; check it and connect again."
    assert not browser.find_element(By.ID, "workspace").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('wsicl-token')") is None
    headers = browser.execute_script(
        "const r = await fetch('/'); return r.headers.get('content-security-policy')")
    assert "script-src 'self'" in headers and "default-src 'none'" in headers


def test_cancel_stops_a_run_and_changes_nothing(served, browser):
    server, folder = served
    for copy in range(3):
        shutil.copy(folder / "target.nii.gz", folder / f"more{copy}.nii.gz")
    open_page(browser, server.url, TOKEN)
    open_volumes(browser, folder)
    browser.find_element(By.ID, "fileInput").send_keys(
        "\n".join(str(folder / f"more{copy}.nii.gz") for copy in range(3)))
    wait_for(browser, lambda d: d.execute_script("return window.wsicl.state.volumes.length") == 5)
    browser.find_element(By.ID, "newSetButton").click()
    draw_box(browser)
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#promptList li")) == 1)
    browser.find_element(By.ID, "segmentAllButton").click()
    browser.find_element(By.ID, "cancelButton").click()
    wait_for(browser, lambda d: text(d, "status") == "Cancelled; nothing changed.")
    assert browser.execute_script(
        "return window.wsicl.state.volumes.map(v => Object.keys(v.results).length)") == \
        [0] * 5
    assert browser.find_element(By.ID, "segmentAllButton").is_enabled()


def test_every_upload_format_keeps_its_voxel_order_in_the_page(served, browser):
    """The page overlays a result mask (sent in the uploaded file's voxel order) on NiiVue's
    image voxel for voxel; that holds if NiiVue keeps each format's voxels in file order,
    oblique directions included."""
    from conftest import rotation_direction
    server, folder = served
    image = blob(5, direction=rotation_direction(30.0, axis=2))
    names = [f"oblique.{suffix}" for suffix in ("nii.gz", "nii", "nrrd", "mha")]
    for name in names:
        sitk.WriteImage(image, str(folder / name))
    open_page(browser, server.url, TOKEN)
    wait_for(browser, lambda d: d.find_element(By.ID, "workspace").is_displayed())
    browser.find_element(By.ID, "fileInput").send_keys("\n".join(str(folder / n) for n in names))
    wait_for(browser, lambda d: d.execute_script("return window.wsicl.state.volumes.length") == 4)
    expected = sitk.GetArrayFromImage(image).ravel()
    for index, name in enumerate(names):
        shown = np.array(browser.execute_script(
            f"return Array.from(window.wsicl.state.volumes[{index}].image.img)"))
        assert shown.shape == expected.shape and np.allclose(shown, expected, atol=1e-3), name
        written = bytes(browser.execute_script(f"""
            const volume = window.wsicl.state.volumes[{index}];
            const result = volume.image.clone();
            result.zeroImage();
            result.img[7] = 1;
            volume.results.s = result;
            const set = {{name: "s", colour: "#ff0000", kind: "box", prompts: {{}}}};
            return Array.from(await window.wsicl.segNrrd(volume, [set]));"""))
        (folder / f"{name}.seg.nrrd").write_bytes(written)      # its grid is the image's
        segments = sitk.ReadImage(str(folder / f"{name}.seg.nrrd"))
        for read, wanted in ((segments.GetOrigin(), image.GetOrigin()),
                             (segments.GetSpacing(), image.GetSpacing()),
                             (segments.GetDirection(), image.GetDirection())):
            assert np.allclose(read, wanted, atol=1e-4), name
        assert np.flatnonzero(sitk.GetArrayFromImage(segments)).tolist() == [7], name


def test_interactive_mode_follows_the_prompts_and_points_are_placed_by_a_click(served,
                                                                              browser):
    """Interactive: the shown volume is segmented from its own box once it is drawn, as the
    Python client's interactive request; a point set's click places a point, which this
    box-only server cannot use: the page says so beside Segment."""
    from wsicl import Point
    server, folder = served
    open_page(browser, server.url, TOKEN)
    open_volumes(browser, folder)
    browser.find_element(By.ID, "newSetButton").click()
    browser.find_element(By.ID, "interactiveBox").click()
    draw_box(browser)
    wait_for(browser, lambda d: d.execute_script(
        "return Boolean(window.wsicl.state.volumes[0].results.structure)"))
    ((low, high),) = [(b["min"], b["max"]) for b in exported(browser)["context"][0]["boxes"]]
    expected = sitk.GetArrayFromImage(RemotePredictor(server.url, TOKEN, "tiny")
                                      .segment_interactive(
        sitk.ReadImage(str(folder / "context.nii.gz")), [Box(tuple(low), tuple(high), "RAS")]
    ).mask)
    shown = np.array(browser.execute_script(
        "return Array.from(window.wsicl.state.volumes[0].results.structure.img)"))
    assert np.array_equal(shown, expected.ravel()) and expected.any()
    browser.find_element(By.ID, "interactiveBox").click()             # off again
    saved = exported(browser)                        # the set, as Export JSON writes it
    (folder / "structure.json").write_text(json.dumps(saved))
    browser.find_element(By.CSS_SELECTOR, "#setList button").click()  # deleted
    wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "#promptList li"))
    browser.find_element(By.ID, "importInput").send_keys(str(folder / "structure.json"))
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#promptList li")) == 1)
    assert exported(browser) == saved                                 # back as it was
    Select(browser.find_element(By.ID, "setKind")).select_by_value("point")
    browser.find_element(By.ID, "setName").clear()
    browser.find_element(By.ID, "setName").send_keys("spot")
    browser.find_element(By.ID, "newSetButton").click()
    ActionChains(browser).move_to_element(browser.find_element(By.ID, "viewer")).click() \
        .perform()
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#promptList li")) == 2)
    (position,) = exported(browser)["context"][0]["points"]
    assert len(position) == 3 and Point(tuple(position), "RAS")
    browser.find_element(By.ID, "segmentButton").click()
    wait_for(browser, lambda d: text(d, "segmentError"))
    assert text(browser, "segmentError") == \
        "No model on this server reads point prompts (it has tiny)."


def test_the_page_imports_the_command_lines_context_sets(served, browser):
    """A set in voxel indices (as `wsicl demo` writes) and the same box in LPS millimetres,
    each imported: the target's overlay equals the Python client's run of that file's set;
    a set on a volume that is not open names it, and nothing is added."""
    from wsicl.contextfile import read_context_file
    server, folder = served
    open_page(browser, server.url, TOKEN)
    open_volumes(browser, folder)
    image = sitk.ReadImage(str(folder / "context.nii.gz"))
    low, high = [12, 10, 12], [28, 26, 12]
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(v) for v in c])
               for c in (low, high)]
    documents = {
        "voxel": {"name": "core", "coordinates": "voxel", "context": [
            {"image": "scans/context.nii.gz", "boxes": [{"min": low, "max": high}]}]},
        "lps": {"name": "lps", "coordinates": "LPS", "context": [
            {"image": "context.nii.gz", "boxes": [{"min": list(np.minimum(*corners)),
                                                    "max": list(np.maximum(*corners))}]}]},
        "elsewhere": {"name": "x", "context": [
            {"image": "absent.nii.gz", "boxes": [{"min": low, "max": high}]}]}}
    for name, document in documents.items():
        (folder / f"{name}.json").write_text(json.dumps(document))
    browser.find_element(By.ID, "importInput").send_keys(str(folder / "elsewhere.json"))
    wait_for(browser, lambda d: text(d, "setError"))
    assert text(browser, "setError") == \
        "Open absent.nii.gz first: the set's prompts lie on them."
    assert browser.execute_script("return window.wsicl.state.sets.length") == 0
    browser.find_elements(By.CSS_SELECTOR, "#volumeList .name")[1].click()   # the target
    for name in ("voxel", "lps"):
        browser.find_element(By.ID, "importInput").send_keys(str(folder / f"{name}.json"))
        set_name = documents[name]["name"]
        wait_for(browser, lambda d: d.execute_script(
            f"return window.wsicl.state.sets.some((s) => s.name === '{set_name}')"))
        browser.find_element(By.ID, "segmentButton").click()
        wait_for(browser, lambda d: d.execute_script(
            f"return Boolean(window.wsicl.state.volumes[1].results['{set_name}'])"))
        overlay = np.array(browser.execute_script(
            f"return Array.from(window.wsicl.state.volumes[1].results['{set_name}'].img)"))
        (folder / "scans").mkdir(exist_ok=True)
        shutil.copy(folder / "context.nii.gz", folder / "scans" / "context.nii.gz")
        context = read_context_file(folder / f"{name}.json")
        expected = sitk.GetArrayFromImage(RemotePredictor(server.url, TOKEN, "tiny").segment(
            sitk.ReadImage(str(folder / "target.nii.gz")), context).mask)
        assert 0 < expected.sum() < expected.size
        assert np.array_equal(overlay, expected.ravel()), name


def test_imported_json_is_checked_and_a_huge_box_is_drawn_at_once(served, browser):
    """What the page's JSON import refuses, in one sentence each, with nothing added and
    the page still working; a box of +-1e5 mm is drawn clamped to the volume."""
    server, folder = served
    open_page(browser, server.url, TOKEN)
    open_volumes(browser, folder)
    box = {"min": [-5.0, -5.0, 10.0], "max": [5.0, 5.0, 10.0]}
    bad = [({"colour": 5}, "\"colour\" must be a colour as #rrggbb."),
           ({"colour": "red"}, "\"colour\" must be a colour as #rrggbb."),
           ({"name": ["x"]}, "\"name\" must be text."),
           ({"box": {"min": "abc", "max": [1, 2, 3]}},
            "context[0].boxes[0].min must be three finite numbers."),
           ({"box": {"min": [1, 2], "max": [1, 2, 3]}},
            "context[0].boxes[0].min must be three finite numbers."),
           ({"coordinates": "IJK"}, "\"coordinates\" must be \"voxel\", \"LPS\" or \"RAS\", "
                                    "not \"IJK\"."),
           ({"mask": "seg.nii.gz"}, "context[0] (context.nii.gz): markups files and masks "
                                    "cannot be imported here; give its boxes or points.")]
    for number, (change, message) in enumerate(bad):
        entry = {"image": "context.nii.gz", "boxes": [change.pop("box", box)]}
        if "mask" in change:
            entry["mask"] = change.pop("mask")
        document = {"name": f"s{number}", "coordinates": "RAS", "context": [entry], **change}
        (folder / f"bad{number}.json").write_text(json.dumps(document))
        browser.find_element(By.ID, "importInput").send_keys(str(folder / f"bad{number}.json"))
        wait_for(browser, lambda d: text(d, "setError") == message)
        assert browser.execute_script("return window.wsicl.state.sets.length") == 0
    huge = {"name": "huge", "coordinates": "RAS", "context": [
        {"image": "context.nii.gz", "boxes": [{"min": [-1e5, -1e5, 10.0],
                                                "max": [1e5, 1e5, 10.0]}]}]}
    (folder / "huge.json").write_text(json.dumps(huge))
    started = time.monotonic()
    browser.find_element(By.ID, "importInput").send_keys(str(folder / "huge.json"))
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#promptList li")) == 1)
    assert time.monotonic() - started < 10
    browser.find_element(By.ID, "newSetButton").click()              # the page still works
    wait_for(browser, lambda d: d.execute_script(
        "return window.wsicl.state.sets.map((s) => s.name).join()") == "huge,structure")
    assert not text(browser, "setError")
