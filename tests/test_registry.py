"""Restorer registry: built-ins, registration, entry-point discovery, errors."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

import elqproj.adapters.base as base
from elqproj import InvalidInputError, UnknownNameError, list_restorers, load_restorer
from elqproj.errors import ConfigError
from tests.identity_restorer import IdentityRestorer


def test_builtin_osediff_is_listed_with_capabilities():
    assert "osediff" in list_restorers()
    cap = base.get_restorer_class("osediff").capabilities
    assert cap.scale == 4 and cap.steps == 1 and cap.differentiable and cap.code_licence == "Apache-2.0"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownNameError) as info:
        load_restorer("nope")
    assert "nope" in str(info.value) and "osediff" in str(info.value)


@pytest.fixture
def clean_registry():
    """The built-in restorers only, entry points not yet discovered; registrations end with the test."""
    with base.RESTORERS.isolated():
        yield


def test_register_and_load_a_custom_restorer(clean_registry):
    base.register_restorer("identity", IdentityRestorer)
    restorer = load_restorer("identity", device="cpu")
    assert isinstance(restorer, IdentityRestorer) and restorer.loaded_with == {"device": "cpu"}
    with pytest.raises(ConfigError, match="already registered"):
        base.register_restorer("identity", "somewhere:Else")


def test_register_rejects_non_restorers(clean_registry):
    with pytest.raises(InvalidInputError, match="Restorer subclass"):
        base.register_restorer("bad", dict)


def test_register_rejects_an_empty_name(clean_registry):
    with pytest.raises(InvalidInputError, match="restorer name must be a non-empty string"):
        base.register_restorer(" ", IdentityRestorer)


def test_registering_the_same_restorer_again_is_allowed(clean_registry):
    base.register_restorer("identity", IdentityRestorer)
    base.register_restorer("Identity", IdentityRestorer)
    assert base.get_restorer_class("IDENTITY") is IdentityRestorer


def test_a_builtin_can_be_registered_again_once_imported(clean_registry):
    base.register_restorer("osediff", base.get_restorer_class("osediff"))
    assert base.get_restorer_class("osediff").name == "osediff"


def test_registrations_made_in_isolation_are_gone_afterwards():
    with base.RESTORERS.isolated():
        base.register_restorer("identity", IdentityRestorer)
        assert "identity" in list_restorers()
    assert "identity" not in list_restorers()


def test_entry_point_restorers_are_discovered(clean_registry, tmp_path, monkeypatch):
    pkg = tmp_path / "thirdparty_restorer"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        from tests.identity_restorer import IdentityRestorer as Plugin
    """))
    dist = tmp_path / "thirdparty_restorer-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-restorer\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[elqproj.restorers]\nplugin = thirdparty_restorer:Plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "plugin" in list_restorers()
    assert isinstance(load_restorer("plugin"), IdentityRestorer)
    sys.modules.pop("thirdparty_restorer", None)


def test_broken_registration_is_a_clear_error(clean_registry):
    base.register_restorer("broken", "no_such_module_xyz:Thing")
    with pytest.raises(UnknownNameError, match="cannot be imported"):
        load_restorer("broken")


def test_a_path_to_something_else_is_rejected_on_first_use(clean_registry):
    base.register_restorer("not-a-restorer", "collections:OrderedDict")
    with pytest.raises(UnknownNameError, match=r"'collections:OrderedDict'\) is not a Restorer subclass"):
        base.get_restorer_class("not-a-restorer")


def test_a_restorer_without_a_training_forward_says_it_cannot_be_trained_through():
    with pytest.raises(ConfigError, match="no differentiable one-step forward"):
        IdentityRestorer().training_forward(torch.zeros(1, 3, 8, 8), torch.zeros(1, 77, 8))
