"""The pytest plugin, used exactly as the README tells operators to use it, in a project of their own."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_plugin_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Testing your handlers with `csbot.testing`", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_green_in_an_operators_project(tmp_path):
    shutil.copytree(ROOT / "handlers", tmp_path / "handlers")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_my_handlers.py").write_text(readme_plugin_example())
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 passed" in res.stdout


def test_a_failing_handler_expectation_fails_the_operators_test(tmp_path):
    """The fixtures really drive the bot: a wrong expectation is caught."""
    shutil.copytree(ROOT / "handlers", tmp_path / "handlers")
    (tmp_path / "test_wrong.py").write_text(
        "async def test_wrong(csbot_bot):\n"
        "    await csbot_bot.send_text('o1', '怎么退货？')\n"
        "    await csbot_bot.wait_idle()\n"
        "    assert csbot_bot.replies_to('o1') == ['something else']\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_wrong.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "1 failed" in res.stdout
    assert "7 天内可无理由退货" in res.stdout  # the real reply shows in the failure
