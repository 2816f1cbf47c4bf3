import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_script_is_valid_bash_and_runs_every_check():
    script = ROOT / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    for check in ("gpu_detect_check.py", "gpu_train_check.py", "gpu_gen_check.py"):
        assert check in text and (ROOT / "bench" / check).is_file()
