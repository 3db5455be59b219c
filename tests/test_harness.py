"""The recording mock must catch what stock mocks let through."""

import pulumi
import pytest

from offline import recording


class _Thing(pulumi.CustomResource):
    def __init__(self, name: str, props: dict, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("test:index:Thing", name, props, opts)


def test_duplicate_names_are_caught() -> None:
    def program() -> None:
        _Thing("same", {})
        _Thing("same", {})

    rec = recording.run("t", {}, [], program=program)
    assert rec.duplicates == ["urn:pulumi:t::slm-serving::test:index:Thing::same"]


def test_missing_resource_fails_the_lookup() -> None:
    rec = recording.run("t", {}, [], program=lambda: None)
    with pytest.raises(AssertionError, match="expected one test:index:Thing"):
        rec.one("test:index:Thing")


def test_options_and_secrets_are_recorded() -> None:
    def program() -> None:
        parent = _Thing("parent", {})
        _Thing(
            "child",
            {"password": pulumi.Output.secret("hunter2"), "plain": "x"},
            pulumi.ResourceOptions(parent=parent, protect=True, replace_on_changes=["plain"]),
        )

    rec = recording.run("t", {}, [], program=program)
    child = rec.one("test:index:Thing", "child")
    assert child.protect is True
    assert child.replace_on_changes == ["plain"]
    assert child.parent == rec.one("test:index:Thing", "parent").urn
    assert child.inputs["password"] == recording.Secret("hunter2")
    assert child.plain["password"] == "hunter2"
    assert recording.redact(child.inputs)["password"] == "[secret]"


def test_preview_leaves_computed_outputs_unknown() -> None:
    seen: list[object] = []

    def program() -> None:
        first = _Thing("first", {})
        _Thing("second", {"ref": first.id})

    rec = recording.run("t", {}, [], preview=True, program=program)
    assert rec.one("test:index:Thing", "second").inputs["ref"] is recording.UNKNOWN
    known = recording.run("t", {}, [], preview=False, program=program)
    seen.append(known.one("test:index:Thing", "second").inputs["ref"])
    assert isinstance(seen[0], str) and seen[0].startswith("/subscriptions/")


def test_runs_do_not_leak_into_each_other() -> None:
    def program() -> None:
        _Thing("only", {})

    first = recording.run("t", {}, [], program=program)
    second = recording.run("t", {}, [], program=program)
    assert len(first.resources) == len(second.resources) == 1
    assert not second.duplicates


def test_exports_are_recorded_with_secrecy() -> None:
    def program() -> None:
        pulumi.export("plain", "a")
        pulumi.export("hidden", pulumi.Output.secret("b"))

    rec = recording.run("t", {}, [], program=program)
    assert rec.exports["plain"] == "a"
    assert rec.exports["hidden"] == recording.Secret("b")
