"""watch's thresholds: the seeds' defaults, the shipped profiles' `watch:` values, `--set
watch.KEY=VALUE` (watch's own and render's), durations, and every bad input as one clear
BadInputError (exit 2) naming where it came from."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from composegen import profiles
from composegen.cli import main
from composegen.errors import BadInputError
from composegen.profiles import Overrides, ProfileError
from composegen.watch.settings import Thresholds, parse_duration, thresholds_for

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_the_seeds_values() -> None:
    t = Thresholds()
    assert (t.memory_warn_pct, t.memory_critical_pct, t.temperature_c) == (85.0, 95.0, 83.0)
    assert (t.unhealthy_after, t.healthy_after, t.circuit_breaker) == (3, 2, 5)  # AIRES (001)
    assert (t.restart_loop, t.restart_window_s) == (3, 600.0)
    assert (t.heal_max, t.heal_window_s, t.restore_after_s) == (3, 900.0, 300.0)
    assert t.min_gpu_fraction == 1.0


@pytest.mark.parametrize(
    ("name", "expect"),
    [
        ("rag-a100", {"memory_warn_pct": 85.0, "temperature_c": 83.0}),  # 002
        ("rma-shared", {"memory_warn_pct": 90.0}),  # 003: alerts above 90 %
        ("ollama-pool", {"unhealthy_after": 3, "healthy_after": 2, "circuit_breaker": 5}),  # 001
        ("zenglow-personas", {}),
        ("ollama-replicas", {}),
    ],
)
def test_shipped_profiles_carry_their_seeds_values(name: str, expect: dict[str, float]) -> None:
    prof = profiles.load(name)
    assert dict(prof.watch) == expect
    t = thresholds_for(prof)
    for key, value in expect.items():
        assert getattr(t, key) == value
    if name == "rma-shared":
        assert t.memory_critical_pct == 95.0  # the rest stays at the defaults


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("5s", 5.0), ("5m", 300.0), ("1h", 3600.0), ("30", 30.0), ("2.5s", 2.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text, "--interval") == seconds


def test_parse_duration_takes_yaml_numbers() -> None:
    assert parse_duration(300, "watch.restore_after_s") == 300.0  # type: ignore[arg-type]
    assert parse_duration(1e-3, "watch.restore_after_s") == 0.001  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="longer than 30 days"):
        parse_duration(10**400, "watch.restore_after_s")  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="is not a duration"):
        parse_duration(-5, "watch.restore_after_s")  # type: ignore[arg-type]


def test_parse_duration_zero_only_where_allowed() -> None:
    assert parse_duration("0s", "--x", allow_zero=True) == 0.0
    with pytest.raises(BadInputError, match=r"^--interval: '0s' is zero"):
        parse_duration("0s", "--interval")


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("-5s", "'-5s' is not a duration"),
        ("5d", "'5d' is not a duration"),
        ("", "'' is not a duration"),
        ("soon", "'soon' is not a duration"),
        ("1e3", "'1e3' is not a duration"),
        ("5 m", "'5 m' is not a duration"),
        ("inf", "'inf' is not a duration"),
        ("721h", "'721h' is longer than 30 days"),
        ("0", "'0' is zero"),
    ],
)
def test_parse_duration_rejects(text: str, said: str) -> None:
    with pytest.raises(BadInputError) as exc:
        parse_duration(text, "--restore-after")
    assert exc.value.message == f"--restore-after: {said}"
    assert "\n" not in exc.value.one_line()


def test_set_over_the_profile_over_the_defaults() -> None:
    prof = profiles.load("rag-a100")
    t = thresholds_for(
        prof,
        [
            "watch.memory_warn_pct=80",
            "watch.restore_after_s=90s",
            "watch.heal_window_s=10m",
            "watch.restart_window_s=45",
            "watch.unhealthy_after=5",
            "watch.min_gpu_fraction=0.9",
            "watch.memory_warn_pct=82.5",  # the last one wins
        ],
    )
    assert t.memory_warn_pct == 82.5
    assert (t.restore_after_s, t.heal_window_s, t.restart_window_s) == (90.0, 600.0, 45.0)
    assert (t.unhealthy_after, t.min_gpu_fraction) == (5, 0.9)
    assert t.temperature_c == 83.0  # from the profile


def test_profile_durations_are_text() -> None:
    prof = profiles.load("rag-a100")
    prof = profiles.Profile(**{**prof.__dict__, "watch": {"restore_after_s": "10m"}})
    assert thresholds_for(prof).restore_after_s == 600.0


def test_renders_set_reaches_the_profile() -> None:
    prof = profiles.load(
        "rag-a100", overrides=Overrides(sets=("watch.memory_warn_pct=80", "watch.heal_max=2"))
    )
    t = thresholds_for(prof)
    assert (t.memory_warn_pct, t.heal_max) == (80.0, 2)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("watch.memory_warn_pct=101", "watch.memory_warn_pct: must be <= 100"),
        ("watch.memory_warn_pct=0", "watch.memory_warn_pct: must be >= 1"),
        ("watch.memory_warn_pct=lots", "watch.memory_warn_pct: must be a number, not 'lots'"),
        ("watch.temperature_c=-5", "watch.temperature_c: must be >= 1"),
        ("watch.unhealthy_after=0", "watch.unhealthy_after: must be >= 1"),
        ("watch.heal_max=2.5", "watch.heal_max: must be an integer, not 2.5"),
        ("watch.circuit_breaker=true", "watch.circuit_breaker: must be an integer, not True"),
        ("watch.min_gpu_fraction=0", "watch.min_gpu_fraction: must be > 0"),
        ("watch.min_gpu_fraction=1.5", "watch.min_gpu_fraction: must be <= 1"),
        ("watch.restore_after_s=-5m", "watch.restore_after_s: '-5m' is not a duration"),
        ("watch.restore_after_s=5d", "watch.restore_after_s: '5d' is not a duration"),
        ("watch.restore_after_s=0", "watch.restore_after_s: must be > 0"),
        ("watch.restore_after_s=0s", "'0s' is zero"),
        ("watch.heal_window_s=9999h", "'9999h' is longer than 30 days"),
        ("watch.memory_warn_pct=96", "the memory warn level (96 %) must be below the critical"),
        ("watch.colour=blue", "unknown key 'colour'"),
        ("watch.memory_warn=80", "unknown key 'memory_warn' (did you mean 'memory_warn_pct'?)"),
        ("memory_warn_pct=80", "watch takes only watch.KEY=VALUE"),
        ("watch.memory.warn=80", "watch takes only watch.KEY=VALUE"),
        ("watch.memory_warn_pct", "expected KEY=VALUE"),
    ],
)
def test_bad_set_is_one_line_naming_the_set(text: str, said: str) -> None:
    prof = profiles.load("rag-a100")
    with pytest.raises(BadInputError) as exc:
        thresholds_for(prof, [text])
    line = exc.value.one_line()
    assert line.startswith(f"--set {text!r}"), line
    assert said in line and "\n" not in line


def test_warn_below_critical_is_checked_after_every_set() -> None:
    prof = profiles.load("rag-a100")
    t = thresholds_for(prof, ["watch.memory_warn_pct=96", "watch.memory_critical_pct=98"])
    assert (t.memory_warn_pct, t.memory_critical_pct) == (96.0, 98.0)
    with pytest.raises(BadInputError, match=r"^--set 'watch.memory_critical_pct=80'"):
        thresholds_for(prof, ["watch.memory_critical_pct=80"])


def _profile_with(tmp_path: Path, watch: object) -> Path:
    data = yaml.safe_load((ROOT / "profiles" / "zenglow-personas.yaml").read_text())
    data["watch"] = watch
    path = tmp_path / "zenglow-personas.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("watch", "said"),
    [
        ({"memory_warn_pct": 120}, "watch.memory_warn_pct: must be <= 100"),
        ({"colour": "blue"}, "watch: unknown key 'colour'"),
        ({"unhealthy_after": 0}, "watch.unhealthy_after: must be >= 1"),
        ({"restore_after_s": "five minutes"}, "watch.restore_after_s: 'five minutes' is not a"),
        ({"restore_after_s": "0m"}, "watch.restore_after_s: '0m' is zero"),
        ({"memory_warn_pct": 96}, "watch.memory_warn_pct: the memory warn level (96 %)"),
        (
            {"memory_warn_pct": 90, "memory_critical_pct": 90},
            "watch.memory_warn_pct: the memory warn level (90 %) must be below the critical "
            "level (90 %)",
        ),
        (["memory_warn_pct"], "watch: must be an object"),
    ],
)
def test_bad_profile_watch_section_names_the_file_and_key(
    tmp_path: Path, watch: object, said: str
) -> None:
    path = _profile_with(tmp_path, watch)
    with pytest.raises(ProfileError) as exc:
        profiles.load(str(path))
    line = exc.value.one_line()
    assert line.startswith(str(path)) and said in line, line


def test_profile_watch_section_loads(tmp_path: Path) -> None:
    path = _profile_with(tmp_path, {"restore_after_s": "10m", "heal_max": 2, "temperature_c": 80})
    t = thresholds_for(profiles.load(str(path)))
    assert (t.restore_after_s, t.heal_max, t.temperature_c) == (600.0, 2, 80.0)


def test_renders_bad_set_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plan", "-P", "rag-a100", "--reference", "--set", "watch.memory_warn_pct=101"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("composegen: error: --set 'watch.memory_warn_pct=101'"), err
    assert "watch.memory_warn_pct: must be <= 100" in err[0]
