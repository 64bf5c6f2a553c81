/* pit (PVH): the legacy path. Program the 8259 PIC (IRQ 0-7 -> vectors
 * 0x20-0x27, only IRQ 0 unmasked), route it through LAPIC LINT0 as ExtINT,
 * start PIT channel 0 (mode 2, ~1 ms) and print "PIT TICK\n" from the IRQ 0
 * handler, then reset. The CPU waits in hlt, so the text appears only if the
 * VMM's in-kernel PIT and PIC really deliver. */
#include "guest.inc"
#include "gdt.inc"

#define PIC1_COMMAND       0x20
#define PIC2_COMMAND       0xa0
#define PIC_ICW1_INIT_ICW4 0x11
#define PIC_EOI            0x20
#define PIC1_VECTOR_BASE   0x20
#define PIC2_VECTOR_BASE   0x28
#define PIT_VECTOR         PIC1_VECTOR_BASE      /* IRQ 0 */
#define PIT_CHANNEL0       0x40
#define PIT_MODE_COMMAND   0x43
#define PIT_CH0_LOHI_MODE2 0x34
#define PIT_COUNT_1MS      1193                  /* 1.193182 MHz input clock */
#define LAPIC_LVT_LINT0    (LAPIC_BASE + 0x350)
#define LVT_EXTINT         0x700
#define SPURIOUS_VECTOR    0xff

    .section .text.entry, "ax"
    .code32
    .globl _start
_start:
    mov $stack_top, %esp
    LOAD_GDT
    call idt_init
    mov $pit_interrupt, %eax
    mov $PIT_VECTOR, %ecx
    call idt_set

    /* 8259 initialisation: ICW1 (edge, cascade, ICW4 follows), ICW2 (vector
     * base), ICW3 (slave on IRQ 2), ICW4 (8086 mode), then the masks. */
    mov $PIC_ICW1_INIT_ICW4, %al
    out %al, $PIC1_COMMAND
    out %al, $PIC2_COMMAND
    mov $PIC1_VECTOR_BASE, %al
    out %al, $PIC1_DATA
    mov $PIC2_VECTOR_BASE, %al
    out %al, $PIC2_DATA
    mov $0x04, %al
    out %al, $PIC1_DATA
    mov $0x02, %al
    out %al, $PIC2_DATA
    mov $0x01, %al
    out %al, $PIC1_DATA
    out %al, $PIC2_DATA
    mov $0xfe, %al                     /* only IRQ 0 */
    out %al, $PIC1_DATA
    mov $0xff, %al
    out %al, $PIC2_DATA

    /* The PIC reaches the CPU through LINT0 in ExtINT mode; the LAPIC must be
     * software-enabled first or KVM keeps every LVT masked. */
    movl $(0x100 | SPURIOUS_VECTOR), LAPIC_SVR
    movl $LVT_EXTINT, LAPIC_LVT_LINT0

    mov $PIT_CH0_LOHI_MODE2, %al
    out %al, $PIT_MODE_COMMAND
    mov $(PIT_COUNT_1MS & 0xff), %al
    out %al, $PIT_CHANNEL0
    mov $(PIT_COUNT_1MS >> 8), %al
    out %al, $PIT_CHANNEL0
    sti
.Lwait_for_tick:
    hlt
    jmp .Lwait_for_tick

pit_interrupt:
    mov $tick_message, %esi
    call puts
    mov $PIC_EOI, %al
    out %al, $PIC1_COMMAND
    I8042_RESET

    .section .rodata
tick_message:
    .asciz "PIT TICK\n"

#include "lib32.inc"
#include "idt.inc"
#include "stack.inc"
PVH_NOTE _start
