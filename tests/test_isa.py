"""The int8 recipe follows the target's instruction set (see edgecompress/quantize/isa.py for the measurements)."""

from edgecompress.quantize.isa import Isa, features_from_cpuinfo, host_isa, recipe_for_target, target_isa
from edgecompress.core.targets import TargetProfile, load_profile

X86_AVX2 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx fma avx2 bmi2\n"
X86_VNNI = "flags\t\t: fpu avx2 avx512f avx512bw avx512_vnni\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd asimdhp asimddp i8mm\n"


def profile(**fields) -> TargetProfile:
    return TargetProfile(**({"name": "device", "engine": "ort-cpu", "arch": "x86_64"} | fields))


def test_cpuinfo_flags_are_read_for_x86_and_arm() -> None:
    assert features_from_cpuinfo(X86_AVX2) == {"avx2"}
    assert features_from_cpuinfo(X86_VNNI) == {"avx2", "avx512f", "avx512bw", "avx512_vnni"}
    assert features_from_cpuinfo(ARM) == {"asimddp", "dotprod", "i8mm"}


def test_x86_without_vnni_gets_reduce_range_u8s8() -> None:
    recipe = recipe_for_target(profile(isa=("avx2",)))
    assert (recipe.activation_type, recipe.weight_type, recipe.per_channel, recipe.reduce_range) == ("uint8", "int8", True, True)
    assert "VPMADDUBSW" in recipe.reason


def test_x86_with_vnni_gets_full_range_u8s8() -> None:
    recipe = recipe_for_target(profile(isa=("avx2", "avx512_vnni")))
    assert (recipe.activation_type, recipe.weight_type, recipe.reduce_range) == ("uint8", "int8", False)


def test_arm_with_dotprod_gets_s8s8() -> None:
    recipe = recipe_for_target(profile(arch="aarch64", isa=("asimddp",)))
    assert (recipe.activation_type, recipe.weight_type, recipe.reduce_range) == ("int8", "int8", False)


def test_tensorrt_gets_symmetric_s8s8_per_channel() -> None:
    recipe = recipe_for_target(profile(engine="tensorrt", isa=("avx2",)))
    assert (recipe.activation_type, recipe.weight_type, recipe.per_channel, recipe.symmetric_activations) == ("int8", "int8", True, True)


def test_tensorrt_and_arm_recipes_are_stated_by_keyword_and_keep_full_range() -> None:
    arm = recipe_for_target(profile(arch="aarch64", isa=()))
    assert (arm.activation_type, arm.weight_type, arm.per_channel, arm.reduce_range) == ("int8", "int8", True, False)
    assert recipe_for_target(profile(engine="tensorrt")).quantize_bias is False


def test_isa_facts() -> None:
    assert Isa("x86_64", frozenset({"avx2"})).saturates_u8s8
    assert not Isa("x86_64", frozenset({"avx2", "avx_vnni"})).saturates_u8s8
    assert not Isa("aarch64", frozenset()).saturates_u8s8
    assert Isa("aarch64", frozenset()).label == "no int8 extensions"


def test_a_profile_that_declares_its_isa_ignores_the_host() -> None:
    declared = target_isa(profile(isa=("avx2", "avx512_vnni")))
    assert declared == Isa("x86_64", frozenset({"avx2", "avx512_vnni"}))


def test_cpu_profile_without_isa_takes_this_hosts_flags() -> None:
    """`cpu` (isa = []) is whatever machine builds: its recipe is the one the host's flags select."""
    host = host_isa()
    isa = target_isa(load_profile("cpu"))
    assert isa.features == host.features and isa.arch == "x86_64"
    assert recipe_for_target(load_profile("cpu")) == recipe_for_target(profile(isa=tuple(sorted(host.features)) or ("avx2",)))
