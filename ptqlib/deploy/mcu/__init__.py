"""The INT8 model on a microcontroller (notebook 11): cross-compiled for an Arm Cortex-M,
run in QEMU, bit for bit with ptqlib.

- ``ptqlib.deploy.mcu.tools``             is the cross-compiler and the emulator installed?
- ``ptqlib.deploy.mcu.targets``           the cores (Cortex-M4, M7), QEMU boards, real parts
- ``ptqlib.deploy.mcu.startup``           vector table, reset handler, semihosting, linker script
- ``ptqlib.deploy.mcu.dsp_kernel``        the layer with SXTB16 + SMLAD, weights packed at export
- ``ptqlib.deploy.mcu.cmsis_arithmetic``  CMSIS-NN's conventions: int8, -127..127, two roundings
- ``ptqlib.deploy.mcu.firmware``          the export: the model's C + firmware files + the build
- ``ptqlib.deploy.mcu.emulator``          building with arm-none-eabi-gcc, running in QEMU
- ``ptqlib.deploy.mcu.parity``            every output of the firmware against ptqlib
- ``ptqlib.deploy.mcu.memory``            flash and RAM from arm-none-eabi-size and the map file
- ``ptqlib.deploy.mcu.work``              instructions counted, cycles and energy estimated
"""
