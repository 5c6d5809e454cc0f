"""The web chat in a real browser: Debian's chromium, driven by
chromium-driver through python3-selenium.  Send a message and watch the
answer stream in, reload and see the history, pick another model, clear
the conversation, attach a picture (it reaches the model as an image
part with the file's bytes, the page and the history show a placeholder);
screenshots at 390x844 and 1280x800 in light and dark
mode are saved in web-screenshots/ under the working directory (or
$PARLEY_SCREENSHOTS) for people to look at.  Exit 77 (skipped) when
selenium, chromium or its driver is missing or chromium cannot start."""

import hashlib
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test, run_cases, skip  # noqa: E402
from pictures import png  # noqa: E402
from web_helpers import Web  # noqa: E402

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    skip("python3-selenium is not installed")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SHOTS = os.environ.get("PARLEY_SCREENSHOTS",
                       os.path.join(os.getcwd(), "web-screenshots"))
ANSWER = ["Here is **bold** text", " and a list:\n\n- one\n- two\n\n",
          "Some `code` and a [link](https://example.org).\n\n",
          "```\nprint('hi')\n```\n", "That is all."]


def browser():
    if not os.access(CHROMIUM, os.X_OK) or not os.access(DRIVER, os.X_OK):
        skip("chromium or chromium-driver is not installed")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu",
              "--disable-dev-shm-usage", "--window-size=1280,800",
              "--hide-scrollbars"):
        opts.add_argument(a)
    try:
        return webdriver.Chrome(service=Service(DRIVER), options=opts)
    except Exception as e:  # no display, sandbox, missing libraries
        skip("chromium cannot start: %s" % str(e).splitlines()[0])


def wait(d, pred, timeout=15, what="condition"):
    try:
        return WebDriverWait(d, timeout).until(lambda drv: pred(drv),
                                               message=what)
    except Exception:
        print("page text when waiting for %s:\n%s" %
              (what, d.find_element(By.TAG_NAME, "body").text))
        for entry in d.get_log("browser"):
            print("console:", entry)
        raise


def bubbles(d, kind):
    return d.find_elements(By.CSS_SELECTOR, "#log .msg." + kind)


def shoot(d, name, width, height, dark):
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1,
        "mobile": width < 500})
    d.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "features": [{"name": "prefers-color-scheme",
                      "value": "dark" if dark else "light"}]})
    time.sleep(0.3)
    os.makedirs(SHOTS, exist_ok=True)
    path = os.path.join(SHOTS, "%s-%dx%d-%s.png" %
                        (name, width, height, "dark" if dark else "light"))
    d.save_screenshot(path)
    return path


def test_chat_in_a_browser():
    d = browser()
    try:
        with Test() as t:
            w = Web(t)
            w.stub.script([{"pieces": ANSWER, "chunk_delay": 0.25}])
            d.get(w.origin + "/")
            wait(d, lambda drv: drv.find_element(By.ID, "title").text ==
                 "parley", what="page loaded")
            picker = Select(d.find_element(By.ID, "model"))
            assert picker.first_selected_option.text == "test-model"
            box = d.find_element(By.ID, "input")
            box.send_keys("Show me some Markdown")
            box.send_keys(Keys.ENTER)
            wait(d, lambda drv: bubbles(drv, "user"), what="own message")
            # The answer streams in: a growing bubble first...
            el = wait(d, lambda drv: bubbles(drv, "streaming"),
                      what="streamed progress")[0]
            partial = el.text
            shoot(d, "streaming", 390, 844, False)
            assert partial and "That is all." not in partial, partial
            # ...then the final text, rendered from Markdown.
            wait(d, lambda drv: not bubbles(drv, "streaming") and
                 "That is all." in drv.find_element(By.ID, "log").text,
                 what="final answer")
            bot = bubbles(d, "bot")[-1]
            assert bot.find_element(By.TAG_NAME, "strong").text == "bold"
            assert len(bot.find_elements(By.TAG_NAME, "li")) == 2
            link = bot.find_element(By.TAG_NAME, "a")
            assert link.get_attribute("rel") == "noopener noreferrer"
            assert not d.find_element(By.ID, "thinking").is_displayed()
            for width, height in ((390, 844), (1280, 800)):
                for dark in (False, True):
                    shoot(d, "chat", width, height, dark)
            # Reload: the history comes back from Redis.
            d.get(w.origin + "/")
            wait(d, lambda drv: len(bubbles(drv, "bot")) == 1 and
                 len(bubbles(drv, "user")) == 1, what="history")
            assert "That is all." in bubbles(d, "bot")[0].text
            # Pick another model: !model through the router.
            Select(d.find_element(By.ID, "model")).select_by_visible_text(
                "other-model")
            wait(d, lambda drv: bubbles(drv, "notice"), what="model notice")
            assert "other-model" in bubbles(d, "notice")[-1].text
            # Clear: !reset, the conversation is gone, also after reload.
            d.find_element(By.ID, "clear").click()
            wait(d, lambda drv: bubbles(drv, "notice") and
                 not bubbles(drv, "user"), what="cleared")
            d.get(w.origin + "/")
            time.sleep(1)
            assert not bubbles(d, "user") and not bubbles(d, "bot")
            reqs = w.stub.requests()
            box = d.find_element(By.ID, "input")
            box.send_keys("after the clear")
            box.send_keys(Keys.ENTER)
            wait(d, lambda drv: "echo:" in drv.find_element(By.ID, "log").text,
                 what="answer after clear")
            reqs = w.stub.requests()
            assert reqs[-1]["body"]["model"] == "other-model"
            roles = [m["role"] for m in reqs[-1]["body"]["messages"]]
            assert roles.count("assistant") == 0 or \
                "That is all." not in str(reqs[-1]["body"]), roles
            shoot(d, "after-clear", 390, 844, True)
            assert w.terminate() == 0
    finally:
        d.quit()


def test_picture_in_a_browser():
    d = browser()
    try:
        with Test() as t:
            w = Web(t, llm_extra='vision_models = [ "test-model" ];')
            pic = png(24, 24, 11)
            path = os.path.join(t.tmp, "sunset.png")
            with open(path, "wb") as f:
                f.write(pic)
            d.get(w.origin + "/")
            wait(d, lambda drv: drv.find_element(By.ID, "title").text ==
                 "parley", what="page loaded")
            d.find_element(By.ID, "picture").send_keys(path)
            chip = d.find_element(By.ID, "attached")
            wait(d, lambda drv: chip.is_displayed() and
                 "sunset.png" in chip.text, what="attachment shown")
            box = d.find_element(By.ID, "input")
            box.send_keys("What colours do you see?")
            shoot(d, "picture-attached", 390, 844, False)
            box.send_keys(Keys.ENTER)
            wait(d, lambda drv: "echo:" in drv.find_element(By.ID, "log").text,
                 what="answer to the picture")
            assert not chip.is_displayed()
            own = bubbles(d, "user")[-1].text
            assert own.startswith("[picture: sunset.png]"), own
            img = [i for r in w.stub.requests() for i in r.get("images", [])]
            assert len(img) == 1, img
            assert img[0]["sha256"] == hashlib.sha256(pic).hexdigest(), img
            # Reload: the history has the placeholder, not the picture.
            d.get(w.origin + "/")
            wait(d, lambda drv: len(bubbles(drv, "user")) == 1,
                 what="history")
            assert "[picture: sunset.png, " in bubbles(d, "user")[0].text
            shoot(d, "picture-answered", 1280, 800, True)
            assert w.terminate() == 0
    finally:
        d.quit()


if __name__ == "__main__":
    run_cases([test_chat_in_a_browser, test_picture_in_a_browser])
