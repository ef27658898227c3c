"""Known-answer checkers: is my own implementation of the quantization math right?

Write your own function in a notebook, hand it to the matching checker, and it runs your
function on a few hand-picked cases whose answers come from :mod:`ptqlib.quantization`
(bit-exact with PyTorch). It prints one ``PASS`` line, or raises ``AssertionError``
naming the first case that fails: the inputs, the expected answer, what your function
returned, and a hint about the usual mistake behind that case::

    from ptqlib.classroom.checkers import check_qparams

    def my_qparams(min_val, max_val, quant_min, quant_max):
        ...
        return scale, zero_point

    check_qparams(my_qparams)      # check_qparams: PASS (8 cases)

The function you write for each checker, with its arguments in this order:

- :func:`check_qparams`: ``(min_val, max_val, quant_min, quant_max) -> (scale, zero_point)``,
  the affine qparams for a tensor whose values lie in [min_val, max_val];
- :func:`check_quantize`: ``(x, scale, zero_point, quant_min, quant_max) -> q``, a float
  tensor to an integer tensor;
- :func:`check_dequantize`: ``(q, scale, zero_point) -> x``, an integer tensor back to a
  float tensor;
- :func:`check_requantize`: ``(acc, multiplier, zero_point, quant_min, quant_max) -> q``,
  int32 accumulators to the output's integers;
- :func:`check_fixed_point_multiplier`: ``(multiplier, bits) -> (m0, shift)``, the integer
  form of the requantization multiplier with ``bits`` significant bits;
- :func:`check_affine_accumulator`: ``(products, input_sums, q_w, input_zero_point,
  weight_zero_point) -> acc``, the accumulator of affine weights from its expansion;
- :func:`check_folded_constant`: ``(bias, correction, multiplier, shift,
  output_zero_point) -> constant``, a layer's requantization folded into one constant per
  row;
- :func:`check_int32_bias`: ``(bias, input_scale, weight_scale, output_scale) -> q_b``, the
  int32 bias (to practise with: no notebook asks for it);
- :func:`check_zero_point_correction`: ``(weight, input_zero_point) -> correction``, the
  ``-Z_x sum_k q_w,k`` term per output row (to practise with);
- :func:`check_integer_layer`: ``(q_x, q_w, q_b, input_zero_point, multiplier, shift,
  output_zero_point, relu) -> q_y``, a whole integer Linear (+ ReLU), int8 in and out.
- :func:`check_symmetric_qparams`: ``(min_val, max_val, quant_min, quant_max) -> (scale,
  zero_point)`` on a signed range, zero-point 0;
- :func:`check_per_channel_qparams`: ``(weight, axis) -> (scales, zero_points)``, symmetric
  int8, one scale per slice along ``axis``;
- :func:`check_sqnr_db`: ``(reference, approximation) -> float``, the SQNR in dB;
- :func:`check_linear_parameters`: ``(in_features, out_features) -> int``;
- :func:`check_int8_bytes`: ``(model) -> int``, bytes with int8 weights and int32 biases;
- :func:`check_hardest_digits`: ``(matrix) -> list[int]``, every digit tied for the lowest
  per-class accuracy in a confusion matrix;
- :func:`check_l2_error`: ``(counts, bin_width, first_bin, last_bin, levels) -> float``,
  the exact L2 error of a candidate histogram range (notebook 03);
- :func:`check_mcnemar_p_value`: ``(gained, lost) -> p``, McNemar's exact two-sided p-value
  (notebook 05);
- notebook 06: :func:`check_pack_two_bit`, :func:`check_relu_mean`,
  :func:`check_gptq_column`, :func:`check_adaround_loss`, :func:`check_step_gain_db`;
- notebook 07: :func:`check_fold_into_next`, :func:`check_border_error`;
- notebook 08: :func:`check_quantize_linear`, :func:`check_requantize_float32`,
  :func:`check_qdq_reading`;
- notebook 09: :func:`check_cle_scales`, :func:`check_zeroed_filters`,
  :func:`check_steps_since_dead`;
- notebook 10: :func:`check_double_rounding` (CMSIS-NN's requantization),
  :func:`check_live_bytes`;
- notebook 11: :func:`check_pack_for_smlad`, :func:`check_map_constants`,
  :func:`check_energy_per_inference`;
- notebook 12: :func:`check_decode_e4m3`, :func:`check_mx_scale_code`,
  :func:`check_kmeans_step`.

Rounding: PyTorch rounds halves to even (``torch.round(2.5) == 2``); ``floor(v + 0.5)``
and fixed-point code round halves up or away from zero. The two differ only on exact
ties, so every case here keeps ``v`` at least 0.001 away from a tie (``tests/
test_checkers.py`` verifies that): any correct rounding to the nearest integer passes.

One module per notebook topic, in ``ptqlib.classroom.checkers``: ``fp32_baseline``
(notebook 01: parameter count, INT8 size, hardest digits), ``quantization_math`` (notebook
02: qparams, quantize, dequantize), ``quantization_schemes`` (notebook 02: symmetric and
per-channel qparams, SQNR), ``observers_and_calibration``, ``l2_search`` and
``observer_choice`` (03), ``int8_conversion``, ``integer_layer``, ``integer_layer_parts``
and ``accumulator_terms`` (04), ``evaluation`` (05), ``low_bit`` and ``low_bit_rounding``
(06), ``cnn`` (07), ``deploy`` (08), ``debugging`` (09), ``c_export`` (10),
``microcontroller`` (11) and ``number_formats`` (12). The expected
answers come from ptqlib itself or from private functions that the tests compare with
ptqlib; no solution is exported.

Each exercise is defined once, as an
:class:`~ptqlib.classroom.checkers.exercise.Exercise` (its id, notebook, function name,
cases, fresh cases for grading, comparison and ptqlib's own answer), and listed in
:data:`EXERCISES`: the checker above and ``python -m ptqlib grade`` are both built from it
(see :mod:`ptqlib.classroom.checkers.exercise` for the protocol a new exercise follows).
``core`` holds what the checkers share (:class:`~ptqlib.classroom.checkers.core.Case`,
:func:`~ptqlib.classroom.checkers.core.run_cases` and the comparisons), ready for a checker
of your own.
"""

from ptqlib.classroom.checkers import (
    accumulator_terms,
    c_export,
    cnn,
    debugging,
    deploy,
    evaluation,
    fp32_baseline,
    int8_conversion,
    integer_layer,
    integer_layer_parts,
    l2_search,
    low_bit,
    low_bit_rounding,
    microcontroller,
    number_formats,
    observer_choice,
    observers_and_calibration,
    quantization_math,
    quantization_schemes,
)
from ptqlib.classroom.checkers.accumulator_terms import (
    check_affine_accumulator,
    check_folded_constant,
)
from ptqlib.classroom.checkers.c_export import check_double_rounding, check_live_bytes
from ptqlib.classroom.checkers.cnn import check_border_error, check_fold_into_next
from ptqlib.classroom.checkers.core import Case, run_cases
from ptqlib.classroom.checkers.debugging import (
    check_cle_scales,
    check_steps_since_dead,
    check_zeroed_filters,
)
from ptqlib.classroom.checkers.deploy import (
    check_qdq_reading,
    check_quantize_linear,
    check_requantize_float32,
)
from ptqlib.classroom.checkers.evaluation import check_mcnemar_p_value, mcnemar_cases
from ptqlib.classroom.checkers.exercise import Exercise, OpenQuestion
from ptqlib.classroom.checkers.fp32_baseline import (
    check_hardest_digits,
    check_int8_bytes,
    check_linear_parameters,
)
from ptqlib.classroom.checkers.int8_conversion import (
    check_fixed_point_multiplier,
    check_requantize,
    fixed_point_cases,
    requantize_cases,
)
from ptqlib.classroom.checkers.integer_layer import check_integer_layer, integer_layer_cases
from ptqlib.classroom.checkers.integer_layer_parts import (
    check_int32_bias,
    check_zero_point_correction,
    int32_bias_cases,
    zero_point_correction_cases,
)
from ptqlib.classroom.checkers.l2_search import check_l2_error
from ptqlib.classroom.checkers.low_bit import (
    check_pack_two_bit,
    check_relu_mean,
    check_step_gain_db,
)
from ptqlib.classroom.checkers.low_bit_rounding import check_adaround_loss, check_gptq_column
from ptqlib.classroom.checkers.microcontroller import (
    check_energy_per_inference,
    check_map_constants,
    check_pack_for_smlad,
)
from ptqlib.classroom.checkers.number_formats import (
    check_decode_e4m3,
    check_kmeans_step,
    check_mx_scale_code,
)
from ptqlib.classroom.checkers.observer_choice import (
    ObserverChoiceResult,
    changed_digits,
    check_observer_choice,
    evaluate_observer_choice,
)
from ptqlib.classroom.checkers.observers_and_calibration import (
    check_moving_average_range,
    check_per_channel_scales,
    check_quantization_points,
    check_three_sigma_observer,
)
from ptqlib.classroom.checkers.quantization_math import (
    check_dequantize,
    check_qparams,
    check_quantize,
    dequantize_cases,
    qparams_cases,
    quantize_cases,
)
from ptqlib.classroom.checkers.quantization_schemes import (
    check_per_channel_qparams,
    check_sqnr_db,
    check_symmetric_qparams,
)

# Every exercise of the series, notebook by notebook, in the order of the notebook's cells.
EXERCISES: tuple[Exercise | OpenQuestion, ...] = (
    fp32_baseline.LINEAR_PARAMETERS,
    fp32_baseline.INT8_BYTES,
    fp32_baseline.HARDEST_DIGITS,
    quantization_math.QPARAMS,
    quantization_math.QUANTIZE,
    quantization_math.DEQUANTIZE,
    quantization_schemes.SYMMETRIC_QPARAMS,
    quantization_schemes.PER_CHANNEL_QPARAMS,
    quantization_schemes.SQNR_DB,
    observers_and_calibration.MOVING_AVERAGE_RANGE,
    l2_search.L2_ERROR,
    observers_and_calibration.QUANTIZATION_POINTS,
    observers_and_calibration.THREE_SIGMA_OBSERVER,
    observer_choice.OBSERVER_CHOICE,
    int8_conversion.FIXED_POINT_MULTIPLIER,
    accumulator_terms.AFFINE_ACCUMULATOR,
    accumulator_terms.FOLDED_CONSTANT,
    integer_layer.INTEGER_LAYER,
    # Practice checkers, in no notebook:
    observers_and_calibration.PER_CHANNEL_SCALES,
    integer_layer_parts.INT32_BIAS,
    integer_layer_parts.ZERO_POINT_CORRECTION,
    int8_conversion.REQUANTIZE,
    evaluation.MCNEMAR_P_VALUE,
    low_bit.PACK_TWO_BIT,
    low_bit.RELU_MEAN,
    low_bit_rounding.GPTQ_COLUMN,
    low_bit_rounding.ADAROUND_LOSS,
    low_bit.STEP_GAIN_DB,
    cnn.FOLD_INTO_NEXT,
    cnn.BORDER_ERROR,
    deploy.QUANTIZE_LINEAR,
    deploy.REQUANTIZE_FLOAT32,
    deploy.QDQ_READING,
    debugging.CLE_SCALES,
    debugging.ZEROED_FILTERS,
    debugging.STEPS_SINCE_DEAD,
    c_export.DOUBLE_ROUNDING,
    c_export.LIVE_BYTES,
    microcontroller.PACK_FOR_SMLAD,
    microcontroller.MAP_CONSTANTS,
    microcontroller.ENERGY_PER_INFERENCE,
    number_formats.DECODE_E4M3,
    number_formats.MX_SCALE_CODE,
    number_formats.KMEANS_STEP,
)

__all__ = [
    "EXERCISES",
    "Case",
    "Exercise",
    "OpenQuestion",
    "ObserverChoiceResult",
    "changed_digits",
    "check_adaround_loss",
    "check_affine_accumulator",
    "check_border_error",
    "check_cle_scales",
    "check_decode_e4m3",
    "check_dequantize",
    "check_double_rounding",
    "check_energy_per_inference",
    "check_fixed_point_multiplier",
    "check_fold_into_next",
    "check_folded_constant",
    "check_gptq_column",
    "check_hardest_digits",
    "check_int32_bias",
    "check_int8_bytes",
    "check_integer_layer",
    "check_l2_error",
    "check_kmeans_step",
    "check_linear_parameters",
    "check_live_bytes",
    "check_map_constants",
    "check_mcnemar_p_value",
    "check_moving_average_range",
    "check_mx_scale_code",
    "check_observer_choice",
    "check_pack_for_smlad",
    "check_pack_two_bit",
    "check_per_channel_qparams",
    "check_per_channel_scales",
    "check_qdq_reading",
    "check_qparams",
    "check_quantization_points",
    "check_quantize",
    "check_quantize_linear",
    "check_relu_mean",
    "check_requantize",
    "check_requantize_float32",
    "check_sqnr_db",
    "check_steps_since_dead",
    "check_step_gain_db",
    "check_symmetric_qparams",
    "check_three_sigma_observer",
    "check_zero_point_correction",
    "check_zeroed_filters",
    "dequantize_cases",
    "evaluate_observer_choice",
    "fixed_point_cases",
    "int32_bias_cases",
    "integer_layer_cases",
    "mcnemar_cases",
    "qparams_cases",
    "quantize_cases",
    "requantize_cases",
    "run_cases",
    "zero_point_correction_cases",
]
