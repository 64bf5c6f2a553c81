/* e820 (PVH): print the memory map of hvm_start_info (version >= 1), one
 * "MEM <addr> <size> <type>\n" line per entry (addr and size as 16 hex digits,
 * type in hex), then "E820 END <count in hex>\n" and reset. Prints "BAD START INFO\n"
 * or "NO MEMMAP\n" (version 0, or a map above 4 GiB) instead. */
#include "guest.inc"
#include "start_info.inc"

    .section .text.entry, "ax"
    .code32
    .globl _start
_start:
    mov $stack_top, %esp
    CHECK_START_INFO bad_start_info
    cmpl $1, START_INFO_VERSION(%ebx)
    jb no_memmap
    cmpl $0, START_INFO_MEMMAP_PADDR + 4(%ebx)
    jne no_memmap
    mov START_INFO_MEMMAP_PADDR(%ebx), %edi
    mov START_INFO_MEMMAP_ENTRIES(%ebx), %ebp
    xor %ecx, %ecx                     /* entries printed */
.Lnext_entry:
    cmp %ebp, %ecx
    je .Lall_printed
    mov $mem_prefix, %esi
    call puts
    mov %edi, %esi
    call put_hex64                     /* addr */
    call put_space
    lea 8(%edi), %esi
    call put_hex64                     /* size */
    call put_space
    mov 16(%edi), %eax                 /* type */
    call put_hex_short
    mov $newline, %esi
    call puts
    add $MEMMAP_ENTRY_SIZE, %edi
    inc %ecx
    jmp .Lnext_entry
.Lall_printed:
    mov $end_prefix, %esi
    call puts
    mov %ebp, %eax
    call put_hex_short
    mov $newline, %esi
    call puts
    I8042_RESET

no_memmap:
    mov $no_memmap_message, %esi
    call puts
    I8042_RESET

bad_start_info:
    mov $bad_start_info_message, %esi
    call puts
    I8042_RESET

/* put_hex64: print the little-endian u64 at %esi as 16 hex digits. Clobbers eax, edx. */
put_hex64:
    push %ecx
    mov $8, %ecx
    mov 4(%esi), %eax
    call put_hex
    mov (%esi), %eax
    call put_hex
    pop %ecx
    ret

put_space:
    mov $' ', %al
    jmp putc

    .section .rodata
mem_prefix:
    .asciz "MEM "
end_prefix:
    .asciz "E820 END "
no_memmap_message:
    .asciz "NO MEMMAP\n"
bad_start_info_message:
    .asciz "BAD START INFO\n"

#include "lib32.inc"
#include "stack.inc"
PVH_NOTE _start
