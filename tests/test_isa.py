"""The int8 recipe follows the target's instruction set (see edgecompress/isa.py for the measurements)."""

from edgecompress.isa import features_from_cpuinfo, host_isa, recipe_for_target
from edgecompress.targets import TargetProfile, load_profile

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


def test_cpu_profile_without_isa_uses_the_host() -> None:
    recipe = recipe_for_target(load_profile("cpu"))
    has_vnni = bool(host_isa() & {"avx512_vnni", "avx_vnni", "amx_int8"})
    assert recipe.reduce_range is (not has_vnni)
    assert "/".join(sorted(host_isa())) in recipe.reason
