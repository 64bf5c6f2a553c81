/* hello64 (plain ELF64, no PVH note: the 64-bit Linux boot protocol): entered
 * in long mode with identity-mapped paging and RSI = the zero page
 * (struct boot_params). Prints "RDY64\n", then "E820 <n>\n" with n the
 * e820_entries byte of boot_params (offset 0x1e8) in decimal, and resets. */
#include "guest.inc"

#define BOOT_PARAMS_E820_ENTRIES 0x1e8

    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    mov $stack_top, %esp
    mov %rsi, %rbx
    lea ready_message(%rip), %rsi
    call puts64
    lea e820_prefix(%rip), %rsi
    call puts64
    movzbl BOOT_PARAMS_E820_ENTRIES(%rbx), %eax
    call put_decimal64
    mov $'\n', %al
    call putc64
    I8042_RESET

/* putc64: print %al once the THR is empty. Clobbers edx. */
putc64:
    push %rax
    mov $COM1_LSR, %dx
.Lputc64_wait:
    in %dx, %al
    test $LSR_THR_EMPTY, %al
    jz .Lputc64_wait
    pop %rax
    mov $COM1, %dx
    out %al, %dx
    ret

/* puts64: print the NUL-terminated string at %rsi. Clobbers rax, rdx, rsi. */
puts64:
    lodsb
    test %al, %al
    jz .Lputs64_done
    call putc64
    jmp puts64
.Lputs64_done:
    ret

/* put_decimal64: print %eax (< 1000) in decimal. Clobbers rax, rcx, rdx. */
put_decimal64:
    xor %ecx, %ecx                     /* digits pushed */
    mov $10, %r8d
.Lsplit_digit:
    xor %edx, %edx
    div %r8d
    add $'0', %dl
    push %rdx
    inc %ecx
    test %eax, %eax
    jnz .Lsplit_digit
.Lprint_digit:
    pop %rax
    call putc64
    loop .Lprint_digit
    ret

    .section .rodata
ready_message:
    .asciz "RDY64\n"
e820_prefix:
    .asciz "E820 "

#include "stack.inc"
