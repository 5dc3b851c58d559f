"""Specification of site names: TransformerLens hook names, parsed with errors that name the site."""

import pytest

from activations.dims import ModelDims
from activations.sites import (
    LayerOutOfRangeError,
    SiteError,
    UnknownSiteError,
    expand_sites,
    in_forward_order,
    known_site_names,
    parse_site,
)

pytestmark = pytest.mark.unit

DIMS = ModelDims(n_layers=4, d_model=64, n_heads=4, d_head=16, n_kv_heads=2, d_mlp=128, d_vocab=37)


@pytest.mark.parametrize("name", known_site_names(4))
def test_every_canonical_site_name_parses_to_itself(name):
    assert parse_site(name, 4).name == name


def test_hook_z_has_a_head_axis_and_other_sites_are_d_model():
    assert parse_site("blocks.2.attn.hook_z", 4).shape(DIMS) == (4, 16)
    assert parse_site("blocks.2.hook_resid_post", 4).shape(DIMS) == (64,)
    assert parse_site("ln_final.hook_normalized", 4).shape(DIMS) == (64,)


def test_negative_layers_count_from_the_end():
    assert parse_site("blocks.-1.hook_resid_post", 4).name == "blocks.3.hook_resid_post"


@pytest.mark.parametrize("name", ["blocks.0.hook_resid", "hook_embeds", "blocks.0.mlp.hook_post", "resid_post"])
def test_an_unknown_site_is_named_in_the_error_with_the_known_names(name):
    with pytest.raises(UnknownSiteError, match="unknown site") as e:
        parse_site(name, 4)
    assert repr(name) in str(e.value) and "blocks.{l}.hook_resid_post" in str(e.value)


@pytest.mark.parametrize("layer", [4, 17, -5])
def test_a_layer_out_of_range_is_named_with_the_model_depth(layer):
    with pytest.raises(LayerOutOfRangeError, match=f"layer {layer} is out of range.*4 blocks"):
        parse_site(f"blocks.{layer}.hook_resid_post", 4)


def test_a_non_integer_layer_is_rejected():
    with pytest.raises(SiteError, match="'x' is not an integer"):
        parse_site("blocks.x.hook_resid_post", 4)


def test_star_expands_to_every_layer_and_duplicates_are_dropped_in_order():
    sites = expand_sites(["blocks.*.hook_resid_post", "hook_embed,blocks.1.hook_resid_post"], 3)
    assert [s.name for s in sites] == [
        "blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post", "hook_embed"]


def test_forward_order_follows_the_computation_within_and_across_blocks():
    names = ["ln_final.hook_normalized", "blocks.1.hook_resid_pre", "blocks.0.hook_resid_post",
             "blocks.0.hook_mlp_out", "blocks.0.hook_resid_mid", "blocks.0.hook_attn_out",
             "blocks.0.attn.hook_z", "blocks.0.hook_resid_pre", "hook_embed"]
    ordered = [s.name for s in in_forward_order(expand_sites(names, 2), 2)]
    assert ordered == list(reversed(names))


def test_every_site_of_the_registry_has_a_mapping_in_each_backend_and_in_patching():
    """activations.sites is the one list of hook names: each backend maps all of them, and the
    patching config accepts exactly its block hooks (adding a site is one entry plus its mappings)."""
    import typing

    from activations.backends.nnsight_backend import SITE_EVENTS
    from activations.sites import BLOCK_HOOKS, GLOBAL_HOOKS
    from probes.patching.config import Hook

    assert set(SITE_EVENTS) == set(BLOCK_HOOKS) | set(GLOBAL_HOOKS)
    assert set(typing.get_args(Hook)) == set(BLOCK_HOOKS)
