"""What a bare-metal Cortex-M program needs besides the model (notebook 11): the vector
table and reset handler, semihosting, and the linker script of a part.

No operating system and no C library: these few dozen lines of C are all that runs before
``main`` and all the I/O the firmware has.

- **Vector table** (``startup.c``). At reset the core reads two words at address 0: the
  initial stack pointer and the address of the reset handler; the next words are the
  handlers of the faults (Armv7-M Architecture Reference Manual, B1.5.3).
- **Reset handler**. It first enables the FPU (coprocessors CP10 and CP11 in the CPACR
  register at 0xE000ED88) and the stack guard (below), then ``dsb; isb``, before any float
  instruction can run. C assumes that initialised globals hold their values and the others
  are zero. Their initial values are stored in flash (``.data``'s load address), so the
  handler copies them to RAM and zeroes ``.bss``; and it fills the stack with a known word
  ("painting"), so that the firmware can later see how deep the stack went.
- **Stack guard**. The stack sits at the bottom of RAM (0x20000000) and grows down. Below
  RAM a real part has reserved addresses that raise a bus fault, but QEMU's MPS2 boards read
  zeros there and ignore writes, so an overflow would run on with garbage and hang. The
  reset handler therefore has the MPU (Armv7-M ARM, B3.5) forbid every access to
  0x10000000..0x1FFFFFFF (region 0; the default memory map stays in force elsewhere,
  PRIVDEFENA): the first push past ``_stack_bottom`` faults, on a chip and in QEMU alike.
- **Fault handler**. A fault stacks eight words on the current stack, which after an
  overflow is in the guard, so the handler (``naked``: no C prologue) first moves the stack
  pointer back to ``_stack_top``, then reports through semihosting, from the MemManage
  status (CFSR's MSTKERR, MMARVALID and MMFAR, B3.2.15), whether the stack overflowed, and
  exits with status 3.
- **Semihosting** (``semihosting.c``). ``bkpt 0xab`` with an operation number in r0 and a
  pointer to its arguments in r1 stops the core and asks the debugger (here QEMU) to do the
  operation on the host: open, read, write and close host files, exit with a status (Arm's
  "Semihosting for AArch32 and AArch64" specification). The firmware reads the digits from a
  host file and writes the logits to another, with no UART driver.
- **Linker script** (``<part>.ld``). The ``MEMORY`` regions are the part's flash and RAM;
  code and constants go to flash, variables and the stack to RAM. A program that does not
  fit is refused by the linker: ``region `FLASH' overflowed by N bytes``. The stack comes
  first in RAM: grown past its end it leaves RAM for the guard and the core faults, where a
  stack above the variables would silently overwrite them.
"""

from __future__ import annotations

import textwrap

from ptqlib.deploy.mcu.targets import KB, Part

# The stack: the forward function's arena (its activations, a local array) plus this much
# for the call frames, rounded up to a whole KB; the firmware reports how much it used.
STACK_FRAMES_BYTES = 2 * KB
# What the reset handler paints the stack with (an unlikely value for real data).
STACK_PAINT = 0xDEADBEEF

STARTUP_C = f"""\
/* startup.c: what runs before main on a Cortex-M, with no C library (by ptqlib). */
#include <stddef.h>
#include <stdint.h>

/* Defined by the linker script. */
extern uint32_t _data_load[], _data_start[], _data_end[], _bss_start[], _bss_end[];
extern uint32_t _stack_bottom[], _stack_top[];

int main(void);
void semihosting_exit(int32_t status);
void semihosting_print(const char *text);
void fault_report(void);

#define STACK_PAINT 0x{STACK_PAINT:08X}u
#define CPACR (*(volatile uint32_t *)0xE000ED88u) /* coprocessor access control */
/* The MPU (Armv7-M ARM, B3.5): control, region number, base, attributes and size. */
#define MPU_CTRL (*(volatile uint32_t *)0xE000ED94u)
#define MPU_RNR (*(volatile uint32_t *)0xE000ED98u)
#define MPU_RBAR (*(volatile uint32_t *)0xE000ED9Cu)
#define MPU_RASR (*(volatile uint32_t *)0xE000EDA0u)
#define GUARD_BASE 0x10000000u /* the guard: 0x10000000..0x1FFFFFFF, below RAM */
#define GUARD_SIZE_LOG2 28u    /* 256 MB: a region is 2^k bytes, aligned to 2^k */
#define GUARD_BYTES (1u << GUARD_SIZE_LOG2)
#define RASR_XN (1u << 28) /* no instruction fetch; AP (bits 26:24) = 0: no access */
#define RASR_ENABLE 1u
#define CTRL_PRIVDEFENA (1u << 2) /* the default memory map outside the regions */
#define CTRL_ENABLE 1u
/* What a fault left (B3.2.15): MemManage status in CFSR, and its address. */
#define CFSR (*(volatile uint32_t *)0xE000ED28u)
#define MMFAR (*(volatile uint32_t *)0xE000ED34u)
#define CFSR_MSTKERR (1u << 4)   /* the exception's own stacking hit the guard */
#define CFSR_MMARVALID (1u << 7) /* MMFAR holds the faulting address */

/* The compiler may call these two for copies and clears: with no C library, ours. */
void *memcpy(void *destination, const void *source, size_t count)
{{
    uint8_t *to = destination;
    const uint8_t *from = source;
    while (count--) *to++ = *from++;
    return destination;
}}

void *memset(void *destination, int value, size_t count)
{{
    uint8_t *to = destination;
    while (count--) *to++ = (uint8_t)value;
    return destination;
}}

/* Bytes of stack used so far: from the top down to the deepest word without paint. */
uint32_t stack_bytes_used(void)
{{
    const uint32_t *word = _stack_bottom;
    while (word < _stack_top && *word == STACK_PAINT) word++;
    return (uint32_t)((uintptr_t)_stack_top - (uintptr_t)word);
}}

uint32_t stack_bytes(void)
{{
    return (uint32_t)((uintptr_t)_stack_top - (uintptr_t)_stack_bottom);
}}

__attribute__((noreturn)) void reset_handler(void)
{{
    /* First, full access to the FPU (CP10 and CP11), in effect after the
     * barriers: compiled for the hard-float ABI, even this function may use a
     * float register. */
    CPACR |= 0xFu << 20;
    /* The stack guard: MPU region 0 over the addresses below RAM, no access
     * (AP = 0), no execution (XN); the default memory map everywhere else
     * (PRIVDEFENA). The region's size is 2^(SIZE+1) bytes. */
    MPU_RNR = 0;
    MPU_RBAR = GUARD_BASE;
    MPU_RASR = RASR_XN | (GUARD_SIZE_LOG2 - 1u) << 1 | RASR_ENABLE;
    MPU_CTRL = CTRL_PRIVDEFENA | CTRL_ENABLE;
    __asm__ volatile("dsb\\n\\tisb" ::: "memory");
    uint32_t *stack_pointer;
    __asm__ volatile("mov %0, sp" : "=r"(stack_pointer));
    /* Paint the stack below this function's own frame (64 bytes spared). */
    for (uint32_t *word = _stack_bottom; word < stack_pointer - 16; word++)
        *word = STACK_PAINT;
    /* Initialised globals: copy their values from flash. The others: zero. */
    for (uint32_t *from = _data_load, *to = _data_start; to < _data_end;)
        *to++ = *from++;
    for (uint32_t *to = _bss_start; to < _bss_end;) *to++ = 0;
    semihosting_exit(main());
    for (;;) {{}}
}}

/* Called by fault_handler on a fresh stack: say what happened, exit with status 3. */
__attribute__((noreturn, used)) void fault_report(void)
{{
    const uint32_t status = CFSR, address = MMFAR;
    int in_guard = (status & CFSR_MSTKERR) != 0;
    if ((status & CFSR_MMARVALID) && address - GUARD_BASE < GUARD_BYTES) in_guard = 1;
    semihosting_print(in_guard ? "fault: stack overflow (past _stack_bottom)\\n"
                               : "fault: the firmware crashed (not its stack)\\n");
    semihosting_exit(3);
    for (;;) {{}}
}}

/* Every fault comes here. After a stack overflow the stack pointer is in the guard,
 * so before any C runs (naked: no prologue pushes anything) it goes back to the top. */
__attribute__((naked, noreturn)) static void fault_handler(void)
{{
    __asm__ volatile("movw r0, #:lower16:_stack_top\\n\\t"
                     "movt r0, #:upper16:_stack_top\\n\\t"
                     "mov  sp, r0\\n\\t"
                     "b    fault_report");
}}

/* The first 16 entries: the initial stack pointer, then the system exception handlers
 * (Armv7-M ARM, B1.5.3); the linker script puts this table at address 0. */
typedef void (*handler)(void);
__attribute__((section(".vectors"), used))
static const handler vector_table[16] = {{
    (handler)_stack_top, /* initial stack pointer */
    reset_handler,
    fault_handler, /* NMI */
    fault_handler, /* HardFault */
    fault_handler, /* MemManage */
    fault_handler, /* BusFault */
    fault_handler, /* UsageFault */
    0, 0, 0, 0,    /* reserved */
    fault_handler, /* SVCall */
    fault_handler, /* DebugMonitor */
    0,             /* reserved */
    fault_handler, /* PendSV */
    fault_handler, /* SysTick */
}};
"""

SEMIHOSTING_H = """\
/* semihosting.h: host files and exit through the debugger (generated by ptqlib). */
#ifndef SEMIHOSTING_H
#define SEMIHOSTING_H
#include <stdint.h>

#define SEMIHOSTING_READ_BINARY 1  /* fopen mode "rb" */
#define SEMIHOSTING_WRITE_BINARY 5 /* fopen mode "wb" */

int32_t semihosting_open(const char *path, int32_t mode); /* a handle, or -1 */
int32_t semihosting_read(int32_t file, void *buffer, uint32_t count); /* bytes NOT read */
int32_t semihosting_write(int32_t file, const void *buffer, uint32_t count); /* NOT written */
int32_t semihosting_close(int32_t file);
void semihosting_print(const char *text);
void semihosting_exit(int32_t status);

#endif
"""

SEMIHOSTING_C = """\
/* semihosting.c: bkpt 0xab asks the debugger (QEMU) to do an operation on the host
 * (generated by ptqlib). r0: the operation; r1: the address of its arguments; the result
 * comes back in r0. Operation numbers from Arm's semihosting specification. */
#include "semihosting.h"

enum {
    SYS_OPEN = 0x01,
    SYS_CLOSE = 0x02,
    SYS_WRITE0 = 0x04,
    SYS_WRITE = 0x05,
    SYS_READ = 0x06,
    SYS_EXIT_EXTENDED = 0x20,
    ADP_STOPPED_APPLICATION_EXIT = 0x20026,
};

static int32_t semihosting_call(int32_t operation, const void *arguments)
{
    register int32_t r0 __asm__("r0") = operation;
    register const void *r1 __asm__("r1") = arguments;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static uint32_t length(const char *text)
{
    uint32_t count = 0;
    while (text[count]) count++;
    return count;
}

int32_t semihosting_open(const char *path, int32_t mode)
{
    const uint32_t arguments[3] = {(uint32_t)path, (uint32_t)mode, length(path)};
    return semihosting_call(SYS_OPEN, arguments);
}

int32_t semihosting_read(int32_t file, void *buffer, uint32_t count)
{
    const uint32_t arguments[3] = {(uint32_t)file, (uint32_t)buffer, count};
    return semihosting_call(SYS_READ, arguments);
}

int32_t semihosting_write(int32_t file, const void *buffer, uint32_t count)
{
    const uint32_t arguments[3] = {(uint32_t)file, (uint32_t)buffer, count};
    return semihosting_call(SYS_WRITE, arguments);
}

int32_t semihosting_close(int32_t file)
{
    const uint32_t arguments[1] = {(uint32_t)file};
    return semihosting_call(SYS_CLOSE, arguments);
}

void semihosting_print(const char *text)
{
    semihosting_call(SYS_WRITE0, text);
}

/* QEMU exits with `status` as its own exit status. */
void semihosting_exit(int32_t status)
{
    const uint32_t arguments[2] = {ADP_STOPPED_APPLICATION_EXIT, (uint32_t)status};
    semihosting_call(SYS_EXIT_EXTENDED, arguments);
}
"""


def stack_bytes_for(arena_bytes: int) -> int:
    """The stack to reserve for a forward function whose arena is ``arena_bytes``."""
    return -(-(arena_bytes + STACK_FRAMES_BYTES) // KB) * KB


def linker_script(part: Part, stack_bytes: int) -> str:
    """The linker script of ``part``: its flash and RAM as the MEMORY regions, the stack
    first in RAM (an overflow leaves RAM and faults), the sections, and the symbols the
    reset handler uses."""
    source = textwrap.fill(part.source, 84, subsequent_indent=" * ")
    return f"""\
/* {part.name}.ld: the memory of {part.label} (by ptqlib).
 * Source: {source}.
 * The linker refuses a program that does not fit: region `FLASH' overflowed by N. */
MEMORY
{{
    FLASH (rx)  : ORIGIN = 0x00000000, LENGTH = {part.flash_bytes // KB}K
    RAM   (rwx) : ORIGIN = 0x20000000, LENGTH = {part.ram_bytes // KB}K
}}

STACK_BYTES = {stack_bytes};  /* the firmware measures how much of it a run uses */
ENTRY(reset_handler)

SECTIONS
{{
    .text :                    /* code, the vector table first (read at reset) */
    {{
        KEEP(*(.vectors))
        *(.text*)
    }} > FLASH

    .rodata :                  /* constants: weights, biases, multipliers, tables */
    {{
        *(.rodata*)
        . = ALIGN(4);
    }} > FLASH

    .ARM.exidx :               /* unwinding tables, if a library function brings one */
    {{
        *(.ARM.exidx*)
    }} > FLASH

    .stack (NOLOAD) :          /* first in RAM: grows down from _stack_top, and */
    {{                          /* past _stack_bottom the MPU guard faults */
        _stack_bottom = .;
        . += STACK_BYTES;
        _stack_top = .;
    }} > RAM

    .data :                    /* initialised variables: in flash, copied to RAM */
    {{
        _data_start = .;
        *(.data*)
        . = ALIGN(4);
        _data_end = .;
    }} > RAM AT > FLASH
    _data_load = LOADADDR(.data);

    .bss (NOLOAD) :            /* variables that start at zero */
    {{
        _bss_start = .;
        *(.bss*)
        *(COMMON)
        . = ALIGN(4);
        _bss_end = .;
    }} > RAM
}}
"""
