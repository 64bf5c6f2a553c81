/* timer (PVH): take one LAPIC timer interrupt and print "TICK\n" from its
 * handler, then reset. The CPU waits in hlt (no polling loop): the handler runs
 * only if the VMM's in-kernel LAPIC timer really fires and is delivered.
 * The legacy PIC is masked so that only the LAPIC can interrupt. */
#include "guest.inc"
#include "gdt.inc"

#define TIMER_VECTOR       0x30
#define SPURIOUS_VECTOR    0xff
#define TIMER_DIVIDE_BY_1  0xb
/* KVM's LAPIC counts at 1 GHz: 65536 ticks is ~66 µs (QEMU TCG: 1 GHz too). */
#define TIMER_INITIAL_COUNT 0x10000

    .section .text.entry, "ax"
    .code32
    .globl _start
_start:
    mov $stack_top, %esp
    LOAD_GDT
    call idt_init
    mov $timer_interrupt, %eax
    mov $TIMER_VECTOR, %ecx
    call idt_set

    mov $0xff, %al                     /* mask every legacy PIC line */
    out %al, $PIC1_DATA
    out %al, $PIC2_DATA

    movl $(0x100 | SPURIOUS_VECTOR), LAPIC_SVR   /* software-enable the LAPIC */
    movl $TIMER_DIVIDE_BY_1, LAPIC_TIMER_DIVIDE
    movl $TIMER_VECTOR, LAPIC_LVT_TIMER          /* one-shot, unmasked */
    movl $TIMER_INITIAL_COUNT, LAPIC_TIMER_INIT  /* starts the count-down */
    sti
.Lwait_for_tick:
    hlt
    jmp .Lwait_for_tick

timer_interrupt:
    mov $tick_message, %esi
    call puts
    movl $0, LAPIC_EOI
    I8042_RESET

    .section .rodata
tick_message:
    .asciz "TICK\n"

#include "lib32.inc"
#include "idt.inc"
#include "stack.inc"
PVH_NOTE _start
