/* smp (PVH, 2 vCPUs): the BSP copies a real-mode trampoline to 0x1000 and
 * starts the other vCPU with INIT + SIPI (vector 0x01) through its LAPIC ICR.
 * The AP switches to protected mode, prints "AP1\n" and sets a flag; the BSP
 * polls the flag, prints "SMP OK\n" and resets. If the flag never comes, the
 * BSP prints "SMP TIMEOUT\n" and triple-faults (the VMM exits non-zero).
 *
 * One SIPI, no delays between IPIs: KVM's in-kernel LAPIC needs neither (real
 * hardware wants INIT, 10 ms, SIPI, SIPI); "all excluding self" addressing keeps
 * the guest independent of the APIC ids the VMM hands out. */
#include "guest.inc"
#include "gdt.inc"

#define TRAMPOLINE_ADDR    0x1000
#define SIPI_VECTOR        (TRAMPOLINE_ADDR >> 12)
#define ICR_ALL_BUT_SELF   0x000c0000
#define ICR_INIT_ASSERT    (ICR_ALL_BUT_SELF | 0x4500)
#define ICR_STARTUP        (ICR_ALL_BUT_SELF | 0x4600 | SIPI_VECTOR)
/* Poll budget: ~30 ms on hardware, seconds when every instruction is emulated. */
#define AP_WAIT_POLLS      1000000

    .section .text.entry, "ax"
    .code32
    .globl _start
_start:
    mov $stack_top, %esp
    LOAD_GDT

    cld
    mov $trampoline_start, %esi
    mov $TRAMPOLINE_ADDR, %edi
    mov $((trampoline_end - trampoline_start + 3) / 4), %ecx
    rep movsl

    movl $0x1ff, LAPIC_SVR             /* software-enable, spurious vector 0xff */
    movl $0, LAPIC_ICR_HIGH
    movl $ICR_INIT_ASSERT, LAPIC_ICR_LOW
    call wait_for_icr_idle
    movl $ICR_STARTUP, LAPIC_ICR_LOW
    call wait_for_icr_idle

    mov $AP_WAIT_POLLS, %ecx
.Lwait_for_ap:
    cmpl $0, ap_ready
    jne .Lap_is_up
    pause
    loop .Lwait_for_ap
    mov $timeout_message, %esi
    call puts
    jmp triple_fault

.Lap_is_up:
    mov $smp_ok_message, %esi
    call puts
    I8042_RESET

wait_for_icr_idle:
    testl $ICR_DELIVERY_PENDING, LAPIC_ICR_LOW
    jz .Licr_idle
    pause
    jmp wait_for_icr_idle
.Licr_idle:
    ret

/* The AP lands here from the trampoline in 32-bit protected mode. */
ap_entry32:
    mov $SEL_DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $ap_stack_top, %esp
    mov $ap_message, %esi
    call puts
    movl $1, ap_ready
.Lap_halt:
    cli
    hlt
    jmp .Lap_halt

/* Copied to TRAMPOLINE_ADDR; the AP starts at CS = 0x0100, IP = 0 in real
 * mode. Only CS-relative references, since DS is whatever INIT left. */
    .p2align 4
trampoline_start:
    .code16
    cli
    lgdtl %cs:(trampoline_gdt_pointer - trampoline_start)
    mov %cr0, %eax
    or $1, %eax                        /* PE */
    mov %eax, %cr0
    ljmpl $SEL_CODE32, $ap_entry32
    .p2align 2
trampoline_gdt_pointer:
    .word gdt_end - gdt - 1
    .long gdt
trampoline_end:
    .code32

    .section .rodata
ap_message:
    .asciz "AP1\n"
smp_ok_message:
    .asciz "SMP OK\n"
timeout_message:
    .asciz "SMP TIMEOUT\n"

    .section .bss
    .p2align 2
ap_ready:
    .skip 4
    .p2align 4
    .skip 4096
ap_stack_top:

#include "lib32.inc"
#include "idt.inc"
#include "stack.inc"
PVH_NOTE _start
