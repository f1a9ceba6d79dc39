"""The README's two opening commands stay true: CI runs the test command verbatim."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = text.split("```bash\n")[1:3]
    return [block.split("\n```")[0].strip() for block in blocks]


def test_readme_opens_with_run_and_test_commands():
    run, test = _commands()
    assert run.endswith("hfray train") and "pip install" in run
    assert "pytest" in test and "pip install" in test


def test_ci_runs_the_readme_test_command_verbatim():
    _, test = _commands()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci_lines


def test_install_hints_name_the_pins_of_pyproject():
    """The errors for a missing optional dependency say what to pip install: the same pin pyproject.toml has."""
    from hfray.train.arguments import LIGER_PIN
    from hfray.train.tracking.mlflow import MLFLOW_PIN

    pyproject = (ROOT / "pyproject.toml").read_text()
    for pin in (LIGER_PIN, MLFLOW_PIN):
        assert f'"{pin}"' in pyproject, pin
