"""Promptable models (``task="promptable"``: SAM-Med3D, VISTA3D) at their tiny configurations on CPU, plus the
full builds on the meta device (key list, parameter counts) and the point-coordinate conventions."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

import models
from engine.trainer_settings import TrainerSettings
from models import create_model, list_models, model_info
from models.promptable import PromptableNet, PromptOutput
from models.sam_med3d import state_dict_shapes

NAMES = ("sam_med3d", "vista3d")
KEYS_FILE = Path(models.__file__).resolve().parent / "sam_med3d_keys.json"


def _tiny(name: str, seed: int = 0) -> PromptableNet:
    torch.manual_seed(seed)
    return create_model(name, out_channels=2, **model_info(name).tiny_kwargs)


def _input(name: str, batch: int) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, 1, *model_info(name).test_patch_size)


def _clicks(batch: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    voxels = torch.tensor([[3, 4, 5], [10, 20, 30], [31, 0, 16]], dtype=torch.float32)[:n]
    return voxels.expand(batch, n, 3).clone(), torch.tensor([1, 0, 1])[:n].expand(batch, n).clone()


def _pe(gaussian: torch.Tensor, unit_coords: torch.Tensor) -> torch.Tensor:
    """SAM's random-Fourier position features of coordinates in [0, 1]: f = 2 pi (2c - 1) G; (sin f, cos f[, sin f])."""
    f = 2 * math.pi * ((2 * unit_coords - 1) @ gaussian)
    return torch.cat([f.sin(), f.cos()], dim=-1)


def test_both_entries_are_registered_as_promptable_with_their_metadata() -> None:
    assert set(NAMES) <= set(list_models())
    sam, vista = model_info("sam_med3d"), model_info("vista3d")
    for info in (sam, vista):
        assert info.task == "promptable" and info.spatial_dims == 3 and info.in_channels == 1
        assert info.modalities == ("flair",) and info.any_channels
        assert info.default_patch_size == (128, 128, 128) and info.test_patch_size == (32, 32, 32)
    assert sam.needs_fixed_input and sam.tiny_kwargs["img_size"] == sam.test_patch_size
    assert not vista.needs_fixed_input and vista.divisibility == 16
    assert sam.train_defaults == dict(loss="sam_med3d", optimizer="adamw", lr=1e-4, weight_decay=1e-4,
                                      scheduler="plateau", grad_accum=4, max_grad_norm=1.0)
    settings = TrainerSettings.for_model(TrainerSettings(), sam.train_defaults)  # field names are trainer settings
    assert (settings.loss, settings.scheduler, settings.grad_accum, settings.max_grad_norm) == (
        "sam_med3d", "plateau", 4, 1.0)


@pytest.mark.parametrize("name", NAMES)
def test_builders_refuse_other_channel_counts(name: str) -> None:
    for bad in (1, 5):  # 2: one prompt-free mask; 3 or 4: two or three (BraTS: WT, TC, ET)
        with pytest.raises(ValueError, match=f"{name}: out_channels must be 2 .* or 1 \\+ R with R <= 3"):
            create_model(name, out_channels=bad)
    with pytest.raises(ValueError, match="in_channels must be 1"):
        create_model(name, in_channels=4, out_channels=2)


def test_sam_med3d_is_built_for_one_cube() -> None:
    with pytest.raises(ValueError, match="cube"):
        create_model("sam_med3d", out_channels=2, **dict(model_info("sam_med3d").tiny_kwargs, img_size=(32, 32, 64)))
    model = _tiny("sam_med3d")
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32, 32\)"):
        model.encode(torch.zeros(1, 1, 32, 32, 16))


@pytest.mark.parametrize("name", NAMES)
def test_forward_is_the_two_class_form_of_the_prompt_free_logits(name: str) -> None:
    model = _tiny(name).eval()
    batch = 2  # batch 2 is also faster on CPU: PyTorch runs batch-1 3D convolutions on its slow native path
    x = _input(name, batch)
    with torch.no_grad():
        out, free = model(x), model.prompt_free(x)
    assert out.shape == (batch, 2, 32, 32, 32) and torch.isfinite(out).all()
    assert free.logits.shape == (batch, 1, 32, 32, 32)
    assert torch.equal(out[:, :1], torch.zeros_like(out[:, :1])) and torch.equal(out[:, 1:], free.logits)
    torch.testing.assert_close(out.softmax(1)[:, 1:], torch.sigmoid(free.logits), rtol=0, atol=1e-6)
    assert torch.equal(out.argmax(1, keepdim=True), (torch.sigmoid(free.logits) > 0.5).long())
    with torch.no_grad():  # prompt_free is decode(encode(x)) without prompts
        torch.testing.assert_close(model.decode(model.encode(x), None, None, None).logits, free.logits)


@pytest.mark.parametrize("name", NAMES)
def test_encode_once_then_decode_one_and_three_clicks(name: str) -> None:
    model = _tiny(name).eval()
    batch = 2
    x = _input(name, batch)
    with torch.no_grad():
        emb = model.encode(x)
        free = model.decode(emb, None, None, None).logits
        one = model.decode(emb, *_clicks(batch, 1), None)
        three = model.decode(emb, *_clicks(batch, 3), None)
        alone = model.decode(model.encode(x[1:]), *_clicks(1, 3), None).logits  # batching keeps samples apart
    torch.testing.assert_close(three.logits[1:], alone, rtol=1e-4, atol=1e-5)
    for out in (one, three):
        assert isinstance(out, PromptOutput) and out.logits.shape == (batch, 1, 32, 32, 32)
        assert torch.isfinite(out.logits).all()
    assert not torch.allclose(one.logits, free) and not torch.allclose(three.logits, one.logits)
    if model.accepts_mask_prompt:
        assert one.low_res.shape == (batch, 1, 16, 16, 16) and one.iou.shape == (batch, 1)
        with torch.no_grad():
            again = model.decode(emb, *_clicks(batch, 3), one.low_res)
        assert again.logits.shape == (batch, 1, 32, 32, 32) and again.low_res.shape == one.low_res.shape
        assert not torch.allclose(again.logits, three.logits)
    else:
        with torch.no_grad():
            ignored = model.decode(emb, *_clicks(batch, 3), torch.ones(batch, 1, 8, 8, 8))
        torch.testing.assert_close(ignored.logits, three.logits)
    with pytest.raises(ValueError, match="together"):
        model.decode(emb, _clicks(batch, 1)[0], None, None)


@pytest.mark.parametrize("name", NAMES)
def test_prompt_free_training_step_reaches_encoder_and_decoder(name: str) -> None:
    model = _tiny(name).train()
    logits, iou = model(_input(name, 2), with_iou=True)  # the training step's call (through DDP's forward)
    assert logits.shape == (2, 2, 32, 32, 32) and not logits[:, 0].any()
    assert (iou is None) == (name == "vista3d") and (iou is None or iou.shape == (2, 1))
    loss = (logits[:, 1:] * torch.randn_like(logits[:, 1:])).mean() + (iou.sum() if iou is not None else 0)
    loss.backward()
    encoder = {id(p) for p in model.encoder_parameters()}
    grads = {id(p): p.grad for p in model.parameters()}
    assert any(g is not None and g.abs().sum() > 0 for k, g in grads.items() if k in encoder)
    assert any(g is not None and g.abs().sum() > 0 for k, g in grads.items() if k not in encoder)
    if iou is not None:
        assert model.mask_decoder.iou_prediction_head.layers[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(name: str) -> None:
    plain = _tiny(name).train()
    ckpt = copy.deepcopy(plain)
    assert ckpt.supports_gradient_checkpointing
    ckpt.set_gradient_checkpointing(True)
    block = ckpt.image_encoder.blocks[0] if name == "sam_med3d" else ckpt.image_encoder.encoder.layers[0]["blocks"][0]
    calls = []
    block.register_forward_pre_hook(lambda *_: calls.append(1))  # a recomputation stops early: no post-hook
    x = _input(name, 2)
    outs = []
    for model in (plain, ckpt):
        z = model.prompt_free(x).logits
        (z * torch.linspace(-1, 1, z.numel()).view_as(z)).mean().backward()
        outs.append(z.detach())
    assert len(calls) == 2, "the checkpointed block runs again in the backward pass"
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-5)
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert (p.grad is None) == (q.grad is None), n
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-5, msg=n)


@pytest.mark.parametrize("name", NAMES)
def test_encoder_parameters_are_exactly_the_image_encoder(name: str) -> None:
    model = _tiny(name)
    assert model.encoder_prefixes == ("image_encoder.",)
    encoder = [id(p) for p in model.encoder_parameters()]
    assert encoder and sorted(encoder) == sorted(id(p) for p in model.image_encoder.parameters())
    assert len(encoder) < len(list(model.parameters()))


def test_committed_key_list_equals_the_full_sam_med3d_build_and_medims() -> None:
    from medim.models.sam_med3d import build_sam3D_vit_b_ori

    committed = json.loads(KEYS_FILE.read_text())
    with torch.device("meta"):
        ours = state_dict_shapes(create_model("sam_med3d", out_channels=2))
        medim = state_dict_shapes(build_sam3D_vit_b_ori(pretrained=False))
    assert list(ours.items()) == list(committed.items()) == list(medim.items())
    assert len(committed) == 324
    assert {k.split(".", 1)[0] for k in committed} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    assert not [k for k in committed if "pixel_mean" in k or "pixel_std" in k]


def test_full_vista3d_has_monais_vista3d132_keys() -> None:
    from monai.networks.nets import vista3d132

    with torch.device("meta"):
        ours = state_dict_shapes(create_model("vista3d", out_channels=2))
        monai = state_dict_shapes(vista3d132(encoder_embed_dim=48, in_channels=1))
    assert ours == monai


@pytest.mark.parametrize("name", NAMES)
def test_full_parameter_count_equals_the_metadata(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name, out_channels=2)
    assert sum(p.numel() for p in model.parameters()) == model_info(name).num_params


def test_sam_med3d_points_are_voxel_indices_along_array_axes() -> None:
    model = _tiny("sam_med3d")
    points, labels = _clicks(2, 3)
    sparse, _ = model.embed_prompts(points, labels, None, 2)
    gaussian = model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    pe = _pe(gaussian, (points + 0.5) / 32)  # voxel centre, divided by the cube edge, axis k -> coordinate k
    pe = torch.cat([pe, pe[..., : gaussian.shape[1]]], dim=-1)  # SAM-Med3D's third block repeats sin
    kinds = model.prompt_encoder.point_embeddings
    expected = pe + torch.stack([kinds[int(k)].weight[0] for k in labels[0]])
    torch.testing.assert_close(sparse[:, :3], expected)
    torch.testing.assert_close(sparse[:, 3], model.prompt_encoder.not_a_point_embed.weight.expand(2, -1))
    with torch.no_grad():  # integer voxel indices are accepted as they are
        emb = model.encode(_input("sam_med3d", 2))
        torch.testing.assert_close(model.decode(emb, points.long(), labels, None).logits,
                                   model.decode(emb, points, labels, None).logits)


def test_sam_med3d_dense_grid_numbers_its_first_two_axes_the_other_way() -> None:
    """Pinned fact of medim's PositionEmbeddingRandom3D (kept: the released weights were trained with it): the dense
    position feature of token (a, b, c) is the point feature of the voxel at the centre of token (b, a, c)."""
    model = _tiny("sam_med3d")
    patch, (a, b, c) = 8, (0, 2, 3)
    dense = model.prompt_encoder.get_dense_pe()[0, :, a, b, c]
    centre = torch.tensor([[[t * patch + (patch - 1) / 2 for t in (b, a, c)]]])
    point = model.prompt_encoder.pe_layer.forward_with_coords(centre + 0.5, (32, 32, 32))[0, 0]
    torch.testing.assert_close(dense, point)
    swapped = torch.tensor([[[t * patch + (patch - 1) / 2 for t in (a, b, c)]]])
    assert not torch.allclose(dense, model.prompt_encoder.pe_layer.forward_with_coords(swapped + 0.5, (32,) * 3)[0, 0])


def test_vista3d_points_are_voxel_indices_along_array_axes() -> None:
    model = _tiny("vista3d").eval()
    pe_layer = model.point_head.pe_layer
    size, voxel = (8, 16, 32), (1, 5, 20)  # a non-cubic grid: coordinate k is divided by the size of axis k
    point = pe_layer.forward_with_coords(torch.tensor([[voxel]], dtype=torch.float32) + 0.5, size)[0, 0]
    torch.testing.assert_close(point, pe_layer(size)[:, voxel[0], voxel[1], voxel[2]])
    torch.testing.assert_close(point, _pe(pe_layer.positional_encoding_gaussian_matrix,
                                          (torch.tensor(voxel) + 0.5) / torch.tensor(size)))
    points, labels = _clicks(2, 3)
    with torch.no_grad():  # decode hands the points to the point head unchanged
        emb = model.encode(_input("vista3d", 2))
        torch.testing.assert_close(model.decode(emb, points, labels, None).logits[:1],
                                   model.point_head(emb.point[:1], points[:1], labels[:1], class_vector=None))
