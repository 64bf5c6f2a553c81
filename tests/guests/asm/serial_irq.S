/* serial_irq (PVH): route COM1's IRQ 4 through the IOAPIC to the BSP, enable
 * the "transmit holding register empty" interrupt (IER bit 1) and print
 * "SERIAL IRQ\n" from the handler, then reset. The CPU waits in hlt, so the
 * text appears only if the VMM's 8250 raises IRQ 4 and KVM delivers it.
 * The legacy PIC is masked so the interrupt can only come through the IOAPIC. */
#include "guest.inc"
#include "gdt.inc"

#define SERIAL_VECTOR      0x34
#define SPURIOUS_VECTOR    0xff
#define COM1_GSI           4
#define IER_THR_EMPTY      0x02
#define MCR_OUT2           0x08      /* gates the UART's IRQ line on PC hardware */

    .section .text.entry, "ax"
    .code32
    .globl _start
_start:
    mov $stack_top, %esp
    LOAD_GDT
    call idt_init
    mov $serial_interrupt, %eax
    mov $SERIAL_VECTOR, %ecx
    call idt_set

    mov $0xff, %al                     /* mask every legacy PIC line */
    out %al, $PIC1_DATA
    out %al, $PIC2_DATA

    movl $(0x100 | SPURIOUS_VECTOR), LAPIC_SVR
    /* IOAPIC redirection entry 4: vector, fixed, physical, edge, active high,
     * unmasked, to APIC id 0. High dword first so it is never live half-set. */
    movl $(0x10 + 2 * COM1_GSI + 1), IOAPIC_REGSEL
    movl $0, IOAPIC_WINDOW
    movl $(0x10 + 2 * COM1_GSI), IOAPIC_REGSEL
    movl $SERIAL_VECTOR, IOAPIC_WINDOW

    mov $MCR_OUT2, %al
    mov $COM1_MCR, %dx
    out %al, %dx
    sti
    mov $IER_THR_EMPTY, %al            /* THR is empty: the UART interrupts at once */
    mov $COM1_IER, %dx
    out %al, %dx
.Lwait_for_irq:
    hlt
    jmp .Lwait_for_irq

serial_interrupt:
    mov $COM1_IER, %dx                 /* quiet the UART before printing */
    xor %al, %al
    out %al, %dx
    mov $COM1_IIR, %dx                 /* reading IIR acknowledges THR-empty */
    in %dx, %al
    mov $serial_message, %esi
    call puts
    movl $0, LAPIC_EOI
    I8042_RESET

    .section .rodata
serial_message:
    .asciz "SERIAL IRQ\n"

#include "lib32.inc"
#include "idt.inc"
#include "stack.inc"
PVH_NOTE _start
