"""One prompt validator, ``check_prompts``: duplicates ignoring case and spaces, templates with
exactly one bare ``{}``, at least two classes, checked before any embedding."""

from __future__ import annotations

import pytest

from backend.errors import InputError
from backend.tasks.zero_shot import DEFAULT_TEMPLATES, check_prompts, parse_classes


@pytest.mark.parametrize(
    ("labels", "names"),
    [(["Tumor ", "tumor"], ("'Tumor '", "'tumor'")), (["tumor  cells", "Tumor cells", "fat"], ("'tumor  cells'", "'Tumor cells'"))],
)
def test_duplicate_classes_ignore_case_and_spaces(labels, names) -> None:
    with pytest.raises(InputError, match="same class") as e:
        check_prompts(labels)
    assert all(n in str(e.value) for n in names)
    with pytest.raises(InputError, match="same class"):
        parse_classes(labels)  # the backend's own parsing refuses them alike


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("an image of {0}", "{0} is not allowed"),
        ("an image of {name}", "{name} is not allowed"),
        ("an image of {:>5}", "{:>5} is not allowed"),
        ("an image of {", "Single '{'"),
        ("an image of tissue", "has no {}"),
        ("{} next to {}", "has 2 {}"),
    ],
)
def test_bad_templates_say_what_is_wrong(template: str, says: str) -> None:
    with pytest.raises(InputError) as e:
        check_prompts(["tumor", "stroma"], None, [template])
    assert says in str(e.value) and repr(template) in str(e.value)


def test_good_prompts_give_the_templates_to_use() -> None:
    assert check_prompts(["tumor", "stroma"]) == DEFAULT_TEMPLATES
    assert check_prompts(["tumor", "stroma"], [["carcinoma"], []], ["a {{literal}} {}"]) == ("a {{literal}} {}",)
    with pytest.raises(InputError, match="at least 2 classes"):
        check_prompts(["tumor"])
    with pytest.raises(InputError, match="3 lists given for 2 classes"):
        check_prompts(["tumor", "stroma"], [[], [], []])


def test_a_one_label_run_is_refused_before_embedding(tmp_path, cmu_slide) -> None:
    from backend.api import SlideRef, ZeroShotRequest
    from backend.local import LocalBackend

    backend = LocalBackend(cache_dir=tmp_path, device="cpu")
    with pytest.raises(InputError, match="at least 2 classes"):
        backend.zero_shot(ZeroShotRequest(SlideRef(str(cmu_slide)), "test-tiny", ("tumor",)))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "embedded before refusing the prompts"
