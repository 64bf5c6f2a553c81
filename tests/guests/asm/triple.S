/* triple (PVH): print "BYE\n", then triple-fault (an empty IDT and ud2). The
 * VMM must exit non-zero with a register dump. */
#include "guest.inc"

    .section .text.entry, "ax"
    .code32
    .globl _start
_start:
    mov $stack_top, %esp
    mov $bye_message, %esi
    call puts
    jmp triple_fault

    .section .rodata
bye_message:
    .asciz "BYE\n"

#include "lib32.inc"
#include "idt.inc"
#include "stack.inc"
PVH_NOTE _start
