"""The guest program: replays an access list natively, one 8-byte load or store per access.

The list is an array of uint32 entries, one per access: ``page << 1 | write``, where ``page`` is a guest page
number (4 KiB pages of guest RAM, from 0) and ``write`` is 1 for a store, 0 for a load. ``encode`` builds it.
Access to page ``p`` touches the 8 bytes at ``ram + p * 4096 + (p % 64) * 64``: a fixed place in each page
(so a write dirties exactly that page), on the page's own cache line, so that the pages' lines spread over
the cache sets as a program's data would rather than all falling into the sets of offset 0.

The host starts a pass with KVM_SET_REGS:

    rip = ENTRY         the loop below
    rsi = list          guest address of the first entry of this vCPU's chunk
    rcx = count         entries in the chunk (at least 1)
    rbx = ram           guest address of guest page 0
    rdx = EXIT_PORT     the port of the exit
    rflags = RFLAGS     IOPL 3, so that ``out`` is legal at CPL3 under VMX and SVM too

and the guest runs the chunk without leaving the CPU, then executes ``out dx, al``, which exits to the host
(KVM_EXIT_IO on EXIT_PORT); the host refills the list and sets the registers again for the next chunk. On
exit rcx is 0 and rsi points past the chunk: the host checks both. The ``out`` is the one instruction KVM
emulates (its I/O exit goes through the instruction emulator under PVM): once per chunk, never an access.

A second entry, TOUCH, reads one entry of each 4 KiB page of a list region (rsi = the region, rcx = its
pages) and exits the same way: the guest process runs it once per vCPU when it starts, so that KVM's faults
on the list buffer are over before the first replay, and every later fault is a fault on guest RAM.

The program is listed as assembly beside its machine code; ``assemble`` resolves the jumps (all rel8).
A test disassembles the bytes with objdump, where present, and compares them with the listing.
"""

import numpy as np

EXIT_PORT = 0xE9  # any port but 0x10 (which PVM turns into KVM_EXIT_SHUTDOWN); 0xE9 is the classic debug port
RFLAGS = 0x3002  # IOPL = 3 (bits 12-13), and bit 1, which is always set

# (label, assembly, machine code): a hex string, or (opcode, target label) for a rel8 jump.
LISTING = (
    ("loop", "mov eax, DWORD PTR [rsi]", "8b 06"),  # eax = page << 1 | write (zero-extends into rax)
    (None, "add rsi, 0x4", "48 83 c6 04"),  # next entry
    (None, "shl rax, 0xb", "48 c1 e0 0b"),  # rax = page << 12 | write << 11
    (None, "mov r9, rax", "49 89 c1"),
    (None, "shr r9, 0x6", "49 c1 e9 06"),  # r9 = page << 6 | write << 5
    (None, "and r9d, 0xfc0", "41 81 e1 c0 0f 00 00"),  # r9 = (page % 64) * 64: the page's cache line
    (None, "btr rax, 0xb", "48 0f ba f0 0b"),  # CF = write; rax = page << 12
    (None, "lea rax, [rax+r9*1]", "4a 8d 04 08"),  # offset of the 8 bytes in RAM (lea leaves CF alone)
    (None, "jb write", ("72", "write")),  # a store?
    (None, "mov r8, QWORD PTR [rbx+rax*1]", "4c 8b 04 03"),  # the load
    (None, "dec rcx", "48 ff c9"),
    (None, "jne loop", ("75", "loop")),
    (None, "jmp done", ("eb", "done")),
    ("write", "mov QWORD PTR [rbx+rax*1], rcx", "48 89 0c 03"),  # the store (of the countdown: any value)
    (None, "dec rcx", "48 ff c9"),
    (None, "jne loop", ("75", "loop")),
    ("done", "out dx, al", "ee"),  # exit to the host: KVM_EXIT_IO
    (None, "jmp done", ("eb", "done")),  # resumed without new registers: exit again
    ("touch", "mov eax, DWORD PTR [rsi]", "8b 06"),  # TOUCH: read one entry of each page of a list region
    (None, "add rsi, 0x1000", "48 81 c6 00 10 00 00"),
    (None, "dec rcx", "48 ff c9"),
    (None, "jne touch", ("75", "touch")),
    (None, "jmp done", ("eb", "done")),
)


def _offsets(listing) -> tuple[list[int], dict[str, int]]:
    sizes = [2 if isinstance(code, tuple) else len(bytes.fromhex(code)) for _, _, code in listing]
    starts = [0, *np.cumsum(sizes).tolist()]
    return starts, {label: starts[i] for i, (label, _, _) in enumerate(listing) if label}


def assemble(listing=LISTING) -> bytes:
    """The machine code of ``listing``, with each jump's rel8 displacement resolved to its label."""
    starts, labels = _offsets(listing)
    out = bytearray()
    for i, (_, asm, code) in enumerate(listing):
        if isinstance(code, tuple):
            opcode, target = code
            displacement = labels[target] - starts[i + 1]
            if not -128 <= displacement < 128:
                raise ValueError(f"{asm}: target {displacement} bytes away, beyond a rel8 jump")
            out += bytes.fromhex(opcode) + displacement.to_bytes(1, "little", signed=True)
        else:
            out += bytes.fromhex(code)
    return bytes(out)


CODE = assemble()
ENTRY = _offsets(LISTING)[1]["loop"]  # where a replay pass starts
TOUCH = _offsets(LISTING)[1]["touch"]  # where the warm-up pass starts: rsi = a region, rcx = its pages
EXIT = _offsets(LISTING)[1]["done"]  # the ``out``: the only instruction KVM emulates (once per chunk)


def encode(pages: np.ndarray, writes: np.ndarray, out: np.ndarray) -> None:
    """Write the entries of accesses ``pages`` (page numbers) and ``writes`` (bools) into ``out`` (uint32)."""
    np.left_shift(pages, 1, out=out, casting="unsafe")
    np.bitwise_or(out, writes, out=out)
