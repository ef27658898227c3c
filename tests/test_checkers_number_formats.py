"""Notebook 12's checkers accept right answers, reject the usual mistakes with their hints,
and report a skeleton that still raises NotImplementedError as not attempted."""

import math

import pytest
import torch

from ptqlib.classroom.checkers.number_formats import (
    check_decode_e4m3,
    check_kmeans_step,
    check_mx_scale_code,
)


def right_decode(byte):
    sign = -1.0 if byte & 0x80 else 1.0
    exponent, mantissa = (byte >> 3) & 0xF, byte & 0x7
    if exponent == 0xF and mantissa == 0x7:
        return math.nan
    if exponent == 0:
        return sign * 2.0**-6 * mantissa / 8
    return sign * 2.0 ** (exponent - 7) * (1 + mantissa / 8)


def decode_without_subnormals(byte):
    sign = -1.0 if byte & 0x80 else 1.0
    exponent, mantissa = (byte >> 3) & 0xF, byte & 0x7
    if exponent == 0xF and mantissa == 0x7:
        return math.nan
    return sign * 2.0 ** (exponent - 7) * (1 + mantissa / 8)  # a leading 1 at exponent 0 too


def right_scale_code(block, emax):
    amax = float(block.abs().max())
    if amax == 0:
        return 0
    return max(-127, min(127, math.floor(math.log2(amax)) - emax)) + 127


def rounded_scale_code(block, emax):
    amax = float(block.abs().max())
    return 0 if amax == 0 else round(math.log2(amax)) - emax + 127  # round, not floor


def right_kmeans_step(values, centroids):
    nearest = (values[:, None] - centroids[None, :]).abs().argmin(dim=1)
    return torch.stack(
        [
            values[nearest == i].mean() if (nearest == i).any() else c
            for i, c in enumerate(centroids)
        ]
    )


def kmeans_step_dividing_by_zero(values, centroids):
    nearest = (values[:, None] - centroids[None, :]).abs().argmin(dim=1)
    return torch.stack([values[nearest == i].mean() for i in range(len(centroids))])


def skeleton(*arguments):
    raise NotImplementedError


def test_right_answers_pass(capsys):
    check_decode_e4m3(right_decode)
    check_mx_scale_code(right_scale_code)
    check_kmeans_step(right_kmeans_step)
    assert capsys.readouterr().out.count("PASS") == 3


def test_the_usual_mistakes_fail_with_their_hints():
    with pytest.raises(AssertionError, match="no leading 1"):
        check_decode_e4m3(decode_without_subnormals)
    with pytest.raises(AssertionError, match="floor, not round"):
        check_mx_scale_code(rounded_scale_code)
    with pytest.raises(AssertionError, match="keeps its place"):
        check_kmeans_step(kmeans_step_dividing_by_zero)


def test_skeletons_are_not_attempted(capsys):
    for checker in (check_decode_e4m3, check_mx_scale_code, check_kmeans_step):
        checker(skeleton)
    assert capsys.readouterr().out.count("NOT ATTEMPTED") == 3
