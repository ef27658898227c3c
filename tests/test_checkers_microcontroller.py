"""The checkers of notebook 11: correct answers pass, the usual mistakes fail with a hint,
the untouched skeleton is reported as not attempted. No toolchain needed."""

import re

import pytest
import torch

from ptqlib.classroom.checkers.microcontroller import (
    MAP_DSP,
    MAP_PLAIN,
    check_energy_per_inference,
    check_map_constants,
    check_pack_for_smlad,
)
from ptqlib.deploy.mcu.memory import section_contents


def pack(weight):
    out_features, in_features = weight.shape
    blocks, groups = -(-out_features // 4), -(-in_features // 4)
    padded = torch.zeros(blocks * 4, groups * 4, dtype=torch.int8)
    padded[:out_features, :in_features] = weight
    return padded.reshape(blocks, 4, groups, 4).permute(0, 2, 1, 3).contiguous()


def pack_without_interleaving(weight):
    return pack(weight).permute(0, 2, 1, 3)  # rows first: [blocks, 4 rows, groups, 4]


def pack_without_padding(weight):
    out_features, in_features = weight.shape
    return weight.reshape(out_features // 4, 4, in_features // 4, 4).permute(0, 2, 1, 3)


def constants(map_text):
    """Bytes per array of .rodata: input sections on one line or wrapped onto two."""
    sizes, section, pending = {}, None, None
    for line in map_text.splitlines():
        if re.match(r"^\.\S+", line):
            section = line.split()[0]
            continue
        fields = line.split()
        if section != ".rodata" or not fields or fields[0] == "*fill*":
            continue
        if fields[0].startswith(".rodata."):
            pending = fields[0].split(".")[2]
            fields = fields[1:]
        if pending and len(fields) >= 2 and fields[1].startswith("0x"):
            sizes[pending] = sizes.get(pending, 0) + int(fields[1], 16)
            pending = None
    return sizes


def constants_with_whole_names(map_text):
    """The name is all that follows ".rodata.": main.str1.4 for the strings of main."""
    sizes = {}
    for match in re.finditer(r"^ \.rodata\.(\S+)\s+0x\w+\s+0x(\w+)", map_text, re.MULTILINE):
        sizes[match.group(1)] = int(match.group(2), 16)
    return sizes


def constants_on_one_line_only(map_text):
    """Name, address and size on one line: misses every name long enough to wrap."""
    sizes = {}
    for line in map_text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0].startswith(".rodata.") and fields[2].startswith("0x"):
            sizes[fields[0].split(".")[2]] = int(fields[2], 16)
    return sizes


def energy(cycles, microamps_per_mhz, volts):
    return cycles * microamps_per_mhz * volts * 1e-6


def test_the_expected_map_answers_by_hand():
    plain = section_contents(MAP_PLAIN, ".rodata")
    assert plain["simplenet_int8_fc1_weight"] == 128 * 784 and plain["main"] == 87
    assert plain["simplenet_int8_fc3_shift"] == 10 and len(plain) == 7
    assert "simplenet_int8_forward" not in plain and "input" not in plain
    assert section_contents(MAP_DSP, ".bss") == {"input_pairs": 0x620}


@pytest.mark.parametrize(
    "checker, solution",
    [
        (check_pack_for_smlad, pack),
        (check_map_constants, constants),
        (check_map_constants, constants_with_whole_names),
        (check_energy_per_inference, energy),
    ],
)
def test_correct_answers_pass(checker, solution, capsys):
    checker(solution)
    assert "PASS" in capsys.readouterr().out


@pytest.mark.parametrize(
    "checker, near_miss, hint",
    [
        (check_pack_for_smlad, pack_without_interleaving, "come one after the other"),
        (check_pack_for_smlad, pack_without_padding, "pad the rows"),
        (check_map_constants, constants_on_one_line_only, "continues on the next line"),
        (check_energy_per_inference, lambda c, i, v: c * i * v, "1 pC per cycle"),
    ],
)
def test_near_misses_fail_with_a_hint(checker, near_miss, hint):
    with pytest.raises(AssertionError, match=hint):
        checker(near_miss)


def test_the_skeleton_is_reported_not_attempted(capsys):
    def skeleton(*arguments):
        raise NotImplementedError

    for checker in (check_pack_for_smlad, check_map_constants, check_energy_per_inference):
        checker(skeleton)
        assert "NOT ATTEMPTED" in capsys.readouterr().out


def test_notebook_10s_double_rounding_answers_are_cmsis_nn_arithmetic():
    """The private answers of notebook 10's check_double_rounding equal
    ptqlib.deploy.mcu.cmsis_arithmetic.arm_nn_requantize (the model notebook 11 runs in the
    firmware) on every case of the checker."""
    from ptqlib.classroom.checkers.c_export import double_rounding_cases
    from ptqlib.deploy.mcu.cmsis_arithmetic import arm_nn_requantize

    for case in double_rounding_cases():
        arguments = dict(case.arguments)
        got = arm_nn_requantize(arguments["acc"], arguments["multiplier"], 31 - arguments["shift"])
        assert torch.equal(got, case.expected), case.name
