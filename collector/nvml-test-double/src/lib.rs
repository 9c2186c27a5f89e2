//! A test build of `libnvidia-ml.so`: the NVML C functions the collector calls, answering for
//! two fixed GPUs, so the real `nvml-wrapper` code path runs in CI without a GPU.
//!
//! GPU 0 (a Hopper board) answers every query: 17 of its 18 NVLinks are up, it has GPM, and
//! no page retirement (NOT_SUPPORTED, as on Ampere and later). GPU 1 answers
//! `NVML_ERROR_NOT_SUPPORTED` for the energy counter, the video encoder and decoder, the ECC
//! counters, HBM temperature, the PCIe byte counters, NVLink and GPM (as a PCIe board without
//! them, or with ECC off, would), answers retired pages (as a board before Ampere would) and
//! reads 0 % utilization (a real zero, not an absence).
//! GPU 0 reports no fan (passively cooled, like an H100 SXM); GPU 1 has one. The values are the
//! constants below; `collector/tests/nvml_source.rs` asserts them exactly.
//!
//! With the env var `NVML_TEST_DOUBLE_INIT_ERROR` set, `nvmlInit_v2` fails with
//! `NVML_ERROR_DRIVER_NOT_LOADED`, to test the collector's init-failure path. With
//! `NVML_TEST_DOUBLE_GPUS=N` (3–64) it has N GPUs: the two above, then copies of GPU 0 with
//! their own UUID and bus (for benchmarks of a full node). With
//! `NVML_TEST_DOUBLE_LOST_AFTER=N`, GPU 1 falls off the bus after N utilization reads of it
//! (N rounds): every query of it then answers `NVML_ERROR_GPU_IS_LOST`, and the event set
//! delivers one XID 79 (fallen off the bus) for it.
//!
//! With `NVML_TEST_DOUBLE_NO_PERMISSION` set, `nvmlDeviceGetViolationStatus` answers
//! `NVML_ERROR_NO_PERMISSION` on every GPU (a query that needs more privilege).
//!
//! XID events: every GPU offers critical-XID events; `NVML_TEST_DOUBLE_XIDS` lists the
//! events the event set delivers, one per wait, in order, as `gpu:code` pairs separated by
//! commas (e.g. `0:13,0:13,1:48`). With none left a wait blocks for its timeout and answers
//! `NVML_ERROR_TIMEOUT`.
//!
//! Processes: `NVML_TEST_DOUBLE_PROCS` lists compute processes as `gpu:pid:used_bytes:sm:mem`
//! or `gpu:pid:used_bytes:sm:mem:gi` (on MIG GPU instance `gi`), separated by commas (e.g.
//! `0:4242:1073741824:30:12`); each has a utilization sample (SM and memory percent as given,
//! encoder and decoder 0) stamped with the current time, so every read is newer than the last.
//!
//! MIG: with `NVML_TEST_DOUBLE_MIG` set, GPU 0 is in MIG mode with two MIG devices, slot 0
//! (3g.40gb, GPU instance 1) and slot 2 (1g.10gb, GPU instance 5), slot 1 empty ([`MIGS`]).
//! As on a real board, the parent then answers NOT_SUPPORTED for utilization and per-process
//! utilization.
#![allow(non_snake_case, missing_docs, clippy::missing_safety_doc)]

use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void};

type Ret = c_int;
const SUCCESS: Ret = 0;
const INVALID_ARGUMENT: Ret = 2;
const NOT_SUPPORTED: Ret = 3;
const NO_PERMISSION: Ret = 4;
const NOT_FOUND: Ret = 6;
const INSUFFICIENT_SIZE: Ret = 7;
const DRIVER_NOT_LOADED: Ret = 9;
const TIMEOUT: Ret = 10;
const GPU_IS_LOST: Ret = 15;

type Device = *mut c_void;

#[derive(Clone, Copy)]
struct Gpu {
    name: &'static str,
    uuid: &'static str,
    serial: &'static str,
    bus_id: &'static str,
    bus: u32,
    util_gpu: u32,
    util_mem: u32,
    mem_total: u64,
    mem_used: u64,
    temp: u32,
    power_mw: u32,
    power_limit_mw: u32,
    energy_mj: Option<u64>,
    sm_mhz: u32,
    mem_mhz: u32,
    mem_reserved: u64,
    sm_max_mhz: u32,
    mem_max_mhz: u32,
    enc_util: Option<u32>,
    dec_util: Option<u32>,
    pcie_replays: u32,
    link_gen: u32,
    link_width: u32,
    /// corrected volatile, uncorrected volatile, corrected aggregate, uncorrected aggregate
    ecc: Option<[u64; 4]>,
    /// power, thermal (ns)
    violation_ns: [u64; 2],
    /// NVML's clocks event (throttle) reason bits
    clocks_event_reasons: u64,
    /// Field value 82; `None`: not supported.
    mem_temp: Option<u32>,
    /// Field values 142–145: remapped rows correctable, uncorrectable, pending, failure.
    remap: [u32; 4],
    /// Field values 197, 198: PCIe bytes sent and received; `None`: not supported.
    pcie_bytes: Option<[u64; 2]>,
    /// Field values 29-31: retired pages SBE, DBE, pending; `None`: not supported (Ampere+).
    retired: Option<[u32; 3]>,
    /// NVLink: links up of the link count (field 91), error totals (fields 38, 45, 52, 59),
    /// KiB sent and received over all links (fields 138, 139, scope UINT_MAX); `None`: a
    /// PCIe-only board.
    nvlink: Option<NvLink>,
    /// GPM activity percent (graphics, SM, occupancy, tensor, DRAM, FP64, FP32, FP16);
    /// `None`: no GPM (before Hopper).
    gpm: Option<[f64; 8]>,
    /// Fan speed percent; `None`: passively cooled.
    fan: Option<u32>,
}

#[derive(Clone, Copy)]
struct NvLink {
    links: u32,
    up: u32,
    errors: [u64; 4],
    kib: [u64; 2],
}

static GPUS: [Gpu; 2] = [
    Gpu {
        name: "NVIDIA H100 80GB HBM3",
        uuid: "GPU-11111111-2222-3333-4444-555555555555",
        serial: "1650123456789",
        bus_id: "00000000:18:00.0",
        bus: 0x18,
        util_gpu: 37,
        util_mem: 21,
        mem_total: 85_899_345_920,
        mem_used: 21_474_836_480,
        temp: 54,
        power_mw: 312_500,
        power_limit_mw: 700_000,
        energy_mj: Some(123_456_789),
        sm_mhz: 1980,
        mem_mhz: 2619,
        mem_reserved: 536_870_912,
        sm_max_mhz: 1980,
        mem_max_mhz: 2619,
        enc_util: Some(12),
        dec_util: Some(3),
        pcie_replays: 7,
        link_gen: 5,
        link_width: 16,
        ecc: Some([3, 0, 41, 1]),
        violation_ns: [2_500_000_000, 0],
        // Power-capped.
        clocks_event_reasons: 0x4,
        mem_temp: Some(61),
        remap: [2, 0, 0, 0],
        // Past 4 GiB: the counters are 64-bit.
        pcie_bytes: Some([5_000_000_000, 7_000_000_000]),
        retired: None,
        // 18 links, one down.
        nvlink: Some(NvLink {
            links: 18,
            up: 17,
            errors: [1, 0, 3, 0],
            kib: [12_345_678, 23_456_789],
        }),
        gpm: Some([62.5, 58.25, 31.0, 44.75, 27.5, 0.5, 12.0, 20.25]),
        fan: None,
    },
    Gpu {
        name: "NVIDIA H100 80GB HBM3",
        uuid: "GPU-66666666-7777-8888-9999-000000000000",
        serial: "1650123456790",
        bus_id: "00000000:2A:00.0",
        bus: 0x2a,
        util_gpu: 0,
        util_mem: 0,
        mem_total: 85_899_345_920,
        mem_used: 524_288_000,
        temp: 31,
        power_mw: 69_800,
        power_limit_mw: 700_000,
        energy_mj: None,
        sm_mhz: 345,
        mem_mhz: 2619,
        mem_reserved: 536_870_912,
        sm_max_mhz: 1980,
        mem_max_mhz: 2619,
        enc_util: None,
        dec_util: None,
        pcie_replays: 0,
        // A link that trained below its best: Gen 4, 8 lanes.
        link_gen: 4,
        link_width: 8,
        ecc: None,
        violation_ns: [0, 0],
        // Idle.
        clocks_event_reasons: 0x1,
        mem_temp: None,
        // A row remap waits for the next reset.
        remap: [0, 1, 1, 0],
        pcie_bytes: None,
        // Answers retired pages (as a board before Ampere would), has no NVLink and no GPM.
        retired: Some([2, 0, 0]),
        nvlink: None,
        gpm: None,
        // A PCIe board with its own fan.
        fan: Some(30),
    },
];

/// The GPUs this process sees (see the module docs).
fn gpus() -> &'static [Gpu] {
    static ALL: std::sync::OnceLock<Vec<Gpu>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let n = std::env::var("NVML_TEST_DOUBLE_GPUS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| (3..=64).contains(n))
            .unwrap_or(GPUS.len());
        let mut all = GPUS.to_vec();
        for i in GPUS.len()..n {
            let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
            all.push(Gpu {
                uuid: leak(format!("GPU-{i:08x}-2222-3333-4444-555555555555")),
                serial: leak(format!("16501234567{i:02}")),
                bus_id: leak(format!("00000000:{:02X}:00.0", 0x18 + i)),
                bus: 0x18 + i as u32,
                ..GPUS[0]
            });
        }
        all
    })
}

fn gpu(d: Device) -> Option<&'static Gpu> {
    let i = d as usize;
    if i == 0 { None } else { gpus().get(i - 1) }
}

/// A MIG device of GPU 0.
pub struct Mig {
    slot: u32,
    uuid: &'static str,
    profile: &'static str,
    gpu_instance: u32,
    compute_instance: u32,
    mem_total: u64,
    mem_used: u64,
}

/// GPU 0's MIG devices when `NVML_TEST_DOUBLE_MIG` is set.
pub static MIGS: [Mig; 2] = [
    Mig {
        slot: 0,
        uuid: "MIG-aaaaaaaa-1111-5222-8333-444444444444",
        profile: "3g.40gb",
        gpu_instance: 1,
        compute_instance: 0,
        mem_total: 42_949_672_960,
        mem_used: 10_737_418_240,
    },
    Mig {
        slot: 2,
        uuid: "MIG-bbbbbbbb-1111-5222-8333-444444444444",
        profile: "1g.10gb",
        gpu_instance: 5,
        compute_instance: 0,
        mem_total: 10_737_418_240,
        mem_used: 1_073_741_824,
    },
];

/// MIG handles: `MIG_HANDLE + slot`.
const MIG_HANDLE: usize = 0x1000;

fn mig_mode() -> bool {
    std::env::var_os("NVML_TEST_DOUBLE_MIG").is_some()
}

/// Whether `d` is a GPU in MIG mode (GPU 0 with `NVML_TEST_DOUBLE_MIG`).
fn in_mig_mode(d: Device) -> bool {
    d as usize == 1 && mig_mode()
}

/// The MIG device handle `d` stands for.
fn mig(d: Device) -> Option<&'static Mig> {
    let slot = (d as usize).checked_sub(MIG_HANDLE)?;
    MIGS.iter()
        .find(|m| m.slot as usize == slot)
        .filter(|_| mig_mode())
}

unsafe fn write_str(s: &str, buf: *mut c_char, len: c_uint) -> Ret {
    if buf.is_null() {
        return INVALID_ARGUMENT;
    }
    if s.len() + 1 > len as usize {
        return INSUFFICIENT_SIZE;
    }
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr().cast::<c_char>(), buf, s.len());
        *buf.add(s.len()) = 0;
    }
    SUCCESS
}

/// Utilization reads of GPU 1 so far (its rounds), for `NVML_TEST_DOUBLE_LOST_AFTER`.
static GPU1_ROUNDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Whether device `d` has fallen off the bus (see the module docs).
fn lost(d: Device) -> bool {
    d as usize == 2
        && std::env::var("NVML_TEST_DOUBLE_LOST_AFTER")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| GPU1_ROUNDS.load(std::sync::atomic::Ordering::Relaxed) > n)
}

macro_rules! with_gpu {
    ($d:expr, |$g:ident| $body:expr) => {
        match gpu($d) {
            Some(_) if lost($d) => GPU_IS_LOST,
            Some($g) => $body,
            None => INVALID_ARGUMENT,
        }
    };
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> Ret {
    if std::env::var_os("NVML_TEST_DOUBLE_INIT_ERROR").is_some() {
        DRIVER_NOT_LOADED
    } else {
        SUCCESS
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> Ret {
    SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlErrorString(_r: Ret) -> *const c_char {
    c"nvml test double error".as_ptr()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(buf: *mut c_char, len: c_uint) -> Ret {
    unsafe { write_str("550.54.15", buf, len) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(v: *mut c_int) -> Ret {
    unsafe { *v = 12040 };
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(n: *mut c_uint) -> Ret {
    unsafe { *n = gpus().len() as c_uint };
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(i: c_uint, d: *mut Device) -> Ret {
    if i as usize >= gpus().len() {
        return INVALID_ARGUMENT;
    }
    unsafe { *d = (i as usize + 1) as Device };
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(uuid: *const c_char, d: *mut Device) -> Ret {
    if uuid.is_null() {
        return INVALID_ARGUMENT;
    }
    let wanted = unsafe { std::ffi::CStr::from_ptr(uuid) };
    match gpus()
        .iter()
        .position(|g| g.uuid.as_bytes() == wanted.to_bytes())
    {
        Some(i) => {
            unsafe { *d = (i + 1) as Device };
            SUCCESS
        }
        None => NOT_FOUND,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(d: Device, buf: *mut c_char, len: c_uint) -> Ret {
    if let Some(m) = mig(d) {
        let name = format!("{} MIG {}", GPUS[0].name, m.profile);
        return unsafe { write_str(&name, buf, len) };
    }
    with_gpu!(d, |g| unsafe { write_str(g.name, buf, len) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(d: Device, buf: *mut c_char, len: c_uint) -> Ret {
    if let Some(m) = mig(d) {
        return unsafe { write_str(m.uuid, buf, len) };
    }
    with_gpu!(d, |g| unsafe { write_str(g.uuid, buf, len) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(d: Device, count: *mut c_uint) -> Ret {
    with_gpu!(d, |_g| {
        unsafe { *count = 7 };
        SUCCESS
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    d: Device,
    index: c_uint,
    out: *mut Device,
) -> Ret {
    with_gpu!(d, |_g| {
        if !in_mig_mode(d) {
            return NOT_SUPPORTED;
        }
        match MIGS.iter().find(|m| m.slot == index) {
            Some(m) => {
                unsafe { *out = (MIG_HANDLE + m.slot as usize) as Device };
                SUCCESS
            }
            None => NOT_FOUND,
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceId(d: Device, id: *mut c_uint) -> Ret {
    match mig(d) {
        Some(m) => {
            unsafe { *id = m.gpu_instance };
            SUCCESS
        }
        None => INVALID_ARGUMENT,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeInstanceId(d: Device, id: *mut c_uint) -> Ret {
    match mig(d) {
        Some(m) => {
            unsafe { *id = m.compute_instance };
            SUCCESS
        }
        None => INVALID_ARGUMENT,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetSerial(d: Device, buf: *mut c_char, len: c_uint) -> Ret {
    with_gpu!(d, |g| unsafe { write_str(g.serial, buf, len) })
}

#[repr(C)]
pub struct PciInfo {
    bus_id_legacy: [c_char; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pci_device_id: c_uint,
    pci_sub_system_id: c_uint,
    bus_id: [c_char; 32],
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(d: Device, p: *mut PciInfo) -> Ret {
    with_gpu!(d, |g| unsafe {
        let p = &mut *p;
        p.domain = 0;
        p.bus = g.bus;
        p.device = 0;
        p.pci_device_id = 0x2330_10de;
        p.pci_sub_system_id = 0x16c1_10de;
        write_str(g.bus_id, p.bus_id_legacy.as_mut_ptr(), 16);
        write_str(g.bus_id, p.bus_id.as_mut_ptr(), 32)
    })
}

#[repr(C)]
pub struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(d: Device, u: *mut Utilization) -> Ret {
    // The collector reads utilization first: each read of GPU 1 starts a round.
    if d as usize == 2 {
        GPU1_ROUNDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    with_gpu!(d, |g| {
        if in_mig_mode(d) {
            return NOT_SUPPORTED;
        }
        unsafe {
            (*u).gpu = g.util_gpu;
            (*u).memory = g.util_mem;
        }
        SUCCESS
    })
}

#[repr(C)]
pub struct MemoryV2 {
    version: c_uint,
    total: c_ulonglong,
    reserved: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(d: Device, m: *mut MemoryV2) -> Ret {
    if let Some(mig) = mig(d) {
        return unsafe {
            let m = &mut *m;
            m.total = mig.mem_total;
            m.reserved = 0;
            m.used = mig.mem_used;
            m.free = mig.mem_total - mig.mem_used;
            SUCCESS
        };
    }
    with_gpu!(d, |g| unsafe {
        let m = &mut *m;
        // NVML checks the caller's struct version; so does the double.
        if m.version != (std::mem::size_of::<MemoryV2>() as u32 | (2 << 24)) {
            return INVALID_ARGUMENT;
        }
        m.total = g.mem_total;
        m.reserved = g.mem_reserved;
        m.used = g.mem_used;
        m.free = g.mem_total - g.mem_reserved - g.mem_used;
        SUCCESS
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(d: Device, sensor: c_int, t: *mut c_uint) -> Ret {
    with_gpu!(d, |g| {
        if sensor != 0 {
            return NOT_SUPPORTED;
        }
        unsafe { *t = g.temp };
        SUCCESS
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    d: Device,
    e: *mut c_ulonglong,
) -> Ret {
    with_gpu!(d, |g| match g.energy_mj {
        Some(v) => {
            unsafe { *e = v };
            SUCCESS
        }
        None => NOT_SUPPORTED,
    })
}

/// A clock of `g` by NVML's clock type (graphics and SM share one clock here, memory is 2),
/// current or maximum.
unsafe fn clock(g: &Gpu, clock: c_int, max: bool, mhz: *mut c_uint) -> Ret {
    let v = match (clock, max) {
        (0 | 1, false) => g.sm_mhz,
        (2, false) => g.mem_mhz,
        (0 | 1, true) => g.sm_max_mhz,
        (2, true) => g.mem_max_mhz,
        _ => return NOT_SUPPORTED,
    };
    unsafe { *mhz = v };
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(d: Device, c: c_int, mhz: *mut c_uint) -> Ret {
    with_gpu!(d, |g| unsafe { clock(g, c, false, mhz) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMaxClockInfo(d: Device, c: c_int, mhz: *mut c_uint) -> Ret {
    with_gpu!(d, |g| unsafe { clock(g, c, true, mhz) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetFanSpeed_v2(
    d: Device,
    fan: c_uint,
    speed: *mut c_uint,
) -> Ret {
    with_gpu!(d, |g| match g.fan {
        Some(v) if fan == 0 => {
            unsafe { *speed = v };
            SUCCESS
        }
        Some(_) => INVALID_ARGUMENT,
        None => NOT_SUPPORTED,
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    d: Device,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> Ret {
    with_gpu!(d, |_g| {
        let on = c_uint::from(in_mig_mode(d));
        unsafe {
            *current = on;
            *pending = on;
        }
        SUCCESS
    })
}

unsafe fn video_util(v: Option<u32>, util: *mut c_uint, period_us: *mut c_uint) -> Ret {
    match v {
        Some(v) => {
            unsafe {
                *util = v;
                *period_us = 167_000;
            }
            SUCCESS
        }
        None => NOT_SUPPORTED,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetEncoderUtilization(
    d: Device,
    util: *mut c_uint,
    period_us: *mut c_uint,
) -> Ret {
    with_gpu!(d, |g| unsafe { video_util(g.enc_util, util, period_us) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDecoderUtilization(
    d: Device,
    util: *mut c_uint,
    period_us: *mut c_uint,
) -> Ret {
    with_gpu!(d, |g| unsafe { video_util(g.dec_util, util, period_us) })
}

/// NVML getters that write one `unsigned int` of the GPU.
macro_rules! uint_getter {
    ($($name:ident => $field:ident),* $(,)?) => {$(
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(d: Device, v: *mut c_uint) -> Ret {
            with_gpu!(d, |g| {
                unsafe { *v = g.$field };
                SUCCESS
            })
        }
    )*};
}

uint_getter! {
    nvmlDeviceGetPowerUsage => power_mw,
    nvmlDeviceGetEnforcedPowerLimit => power_limit_mw,
    nvmlDeviceGetPcieReplayCounter => pcie_replays,
    nvmlDeviceGetCurrPcieLinkGeneration => link_gen,
    nvmlDeviceGetCurrPcieLinkWidth => link_width,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEccErrors(
    d: Device,
    error_type: c_int,
    counter_type: c_int,
    count: *mut c_ulonglong,
) -> Ret {
    with_gpu!(d, |g| {
        let Some(ecc) = g.ecc else {
            return NOT_SUPPORTED;
        };
        let i = match (error_type, counter_type) {
            (0 | 1, 0 | 1) => (error_type + 2 * counter_type) as usize,
            _ => return INVALID_ARGUMENT,
        };
        unsafe { *count = ecc[i] };
        SUCCESS
    })
}

#[repr(C)]
pub struct ViolationTime {
    reference_time: c_ulonglong,
    violation_time: c_ulonglong,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetViolationStatus(
    d: Device,
    policy: c_int,
    v: *mut ViolationTime,
) -> Ret {
    with_gpu!(d, |g| {
        if std::env::var_os("NVML_TEST_DOUBLE_NO_PERMISSION").is_some() {
            return NO_PERMISSION;
        }
        let ns = match policy {
            0 | 1 => g.violation_ns[policy as usize],
            _ => return NOT_SUPPORTED,
        };
        unsafe {
            (*v).reference_time = 1_790_000_000_000_000;
            (*v).violation_time = ns;
        }
        SUCCESS
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksThrottleReasons(
    d: Device,
    reasons: *mut c_ulonglong,
) -> Ret {
    with_gpu!(d, |g| {
        unsafe { *reasons = g.clocks_event_reasons };
        SUCCESS
    })
}

/// `nvmlFieldValue_t`.
#[repr(C)]
pub struct FieldValue {
    field_id: c_uint,
    scope_id: c_uint,
    timestamp: i64,
    latency_usec: i64,
    value_type: c_int,
    nvml_return: Ret,
    /// `nvmlValue_t`: a union of 8 bytes; written as an unsigned int (type 1).
    value: u64,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetFieldValues(
    d: Device,
    count: c_int,
    values: *mut FieldValue,
) -> Ret {
    with_gpu!(d, |g| {
        if count < 0 || values.is_null() {
            return INVALID_ARGUMENT;
        }
        let values = unsafe { std::slice::from_raw_parts_mut(values, count as usize) };
        for v in values {
            // (value type: 1 unsigned int, 3 unsigned long long; the value)
            let got = match v.field_id {
                82 => g.mem_temp.map(|x| (1, u64::from(x))),
                142..=145 => Some((1, u64::from(g.remap[(v.field_id - 142) as usize]))),
                197 | 198 => g.pcie_bytes.map(|b| (3, b[(v.field_id - 197) as usize])),
                29..=31 => g
                    .retired
                    .map(|r| (1, u64::from(r[(v.field_id - 29) as usize]))),
                91 => g.nvlink.map(|n| (1, u64::from(n.links))),
                38 | 45 | 52 | 59 => g
                    .nvlink
                    .map(|n| (3, n.errors[((v.field_id - 38) / 7) as usize])),
                // Throughput: only the all-links scope (the collector asks for it).
                138 | 139 if v.scope_id == u32::MAX => {
                    g.nvlink.map(|n| (3, n.kib[(v.field_id - 138) as usize]))
                }
                _ => None,
            };
            v.timestamp = 1_790_000_000_000_000;
            v.latency_usec = 0;
            match got {
                Some((t, x)) => {
                    v.value_type = t;
                    v.value = x;
                    v.nvml_return = SUCCESS;
                }
                None => v.nvml_return = NOT_SUPPORTED,
            }
        }
        SUCCESS
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(d: Device, index: *mut c_uint) -> Ret {
    // Host-side knowledge: answers even for a GPU off the bus.
    match gpu(d) {
        Some(_) => {
            unsafe { *index = (d as usize - 1) as c_uint };
            SUCCESS
        }
        None => INVALID_ARGUMENT,
    }
}

/// `nvmlEventTypeXidCriticalError`.
const XID_EVENT: u64 = 8;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    d: Device,
    types: *mut c_ulonglong,
) -> Ret {
    with_gpu!(d, |_g| {
        unsafe { *types = XID_EVENT };
        SUCCESS
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut *mut c_void) -> Ret {
    unsafe { *set = std::ptr::dangling_mut::<c_void>() };
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceRegisterEvents(
    d: Device,
    types: c_ulonglong,
    _set: *mut c_void,
) -> Ret {
    with_gpu!(d, |_g| if types & !XID_EVENT == 0 {
        SUCCESS
    } else {
        NOT_SUPPORTED
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlEventSetFree(_set: *mut c_void) -> Ret {
    SUCCESS
}

/// `nvmlEventData_t`.
#[repr(C)]
pub struct EventData {
    device: Device,
    event_type: c_ulonglong,
    event_data: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

/// The XID events still to deliver (device index, code), from `NVML_TEST_DOUBLE_XIDS`.
fn pending_xids() -> &'static std::sync::Mutex<std::collections::VecDeque<(usize, u64)>> {
    static PENDING: std::sync::OnceLock<
        std::sync::Mutex<std::collections::VecDeque<(usize, u64)>>,
    > = std::sync::OnceLock::new();
    PENDING.get_or_init(|| {
        let script = std::env::var("NVML_TEST_DOUBLE_XIDS").unwrap_or_default();
        let events = script
            .split(',')
            .filter_map(|e| {
                let (gpu, code) = e.trim().split_once(':')?;
                Some((gpu.parse().ok()?, code.parse().ok()?))
            })
            .collect();
        std::sync::Mutex::new(events)
    })
}

/// Whether GPU 1's XID 79 (fallen off the bus) has been delivered.
static LOST_XID_SENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    _set: *mut c_void,
    data: *mut EventData,
    timeout_ms: c_uint,
) -> Ret {
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_millis(u64::from(timeout_ms));
    // Polls in short slices, so a GPU falling off the bus mid-wait is told at once.
    let next = loop {
        let next = pending_xids()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
            .or_else(|| {
                (lost(2 as Device)
                    && !LOST_XID_SENT.swap(true, std::sync::atomic::Ordering::Relaxed))
                .then_some((1, 79))
            });
        if next.is_some() || std::time::Instant::now() >= deadline {
            break next;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    match next {
        Some((index, code)) if index < gpus().len() => {
            unsafe {
                *data = EventData {
                    device: (index + 1) as Device,
                    event_type: XID_EVENT,
                    event_data: code,
                    gpu_instance_id: 0,
                    compute_instance_id: 0,
                };
            }
            SUCCESS
        }
        _ => TIMEOUT,
    }
}

/// A compute process: device index, pid, used bytes, sm %, mem %, MIG GPU instance.
type Proc = (usize, u32, u64, u32, u32, Option<u32>);

/// The compute processes of `NVML_TEST_DOUBLE_PROCS`.
fn procs() -> &'static [Proc] {
    static PROCS: std::sync::OnceLock<Vec<Proc>> = std::sync::OnceLock::new();
    PROCS.get_or_init(|| {
        std::env::var("NVML_TEST_DOUBLE_PROCS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| {
                let f: Vec<&str> = p.trim().split(':').collect();
                let (base, gi) = match f.as_slice() {
                    [base @ .., gi] if f.len() == 6 => (base, Some(gi.parse().ok()?)),
                    base => (base, None),
                };
                match base {
                    [g, pid, used, sm, mem] => Some((
                        g.parse().ok()?,
                        pid.parse().ok()?,
                        used.parse().ok()?,
                        sm.parse().ok()?,
                        mem.parse().ok()?,
                        gi,
                    )),
                    _ => None,
                }
            })
            .collect()
    })
}

fn procs_of(d: Device) -> impl Iterator<Item = &'static Proc> {
    procs().iter().filter(move |p| p.0 + 1 == d as usize)
}

/// `nvmlProcessInfo_t` (v2 layout).
#[repr(C)]
pub struct ProcessInfo {
    pid: c_uint,
    used_gpu_memory: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    d: Device,
    count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> Ret {
    with_gpu!(d, |_g| {
        let mine: Vec<_> = procs_of(d).collect();
        let room = unsafe { *count } as usize;
        unsafe { *count = mine.len() as c_uint };
        if mine.is_empty() {
            return SUCCESS;
        }
        if infos.is_null() || room < mine.len() {
            return INSUFFICIENT_SIZE;
        }
        for (i, p) in mine.iter().enumerate() {
            unsafe {
                *infos.add(i) = ProcessInfo {
                    pid: p.1,
                    used_gpu_memory: p.2,
                    // Not MIG: NVML's "no value".
                    gpu_instance_id: p.5.unwrap_or(u32::MAX),
                    compute_instance_id: p.5.map_or(u32::MAX, |_| 0),
                };
            }
        }
        SUCCESS
    })
}

/// `nvmlProcessUtilizationSample_t`.
#[repr(C)]
pub struct ProcessUtilizationSample {
    pid: c_uint,
    time_stamp: c_ulonglong,
    sm_util: c_uint,
    mem_util: c_uint,
    enc_util: c_uint,
    dec_util: c_uint,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessUtilization(
    d: Device,
    samples: *mut ProcessUtilizationSample,
    count: *mut c_uint,
    _last_seen: c_ulonglong,
) -> Ret {
    with_gpu!(d, |_g| {
        if in_mig_mode(d) {
            return NOT_SUPPORTED;
        }
        let mine: Vec<_> = procs_of(d).collect();
        if mine.is_empty() {
            return NOT_FOUND;
        }
        let room = unsafe { *count } as usize;
        unsafe { *count = mine.len() as c_uint };
        if samples.is_null() || room < mine.len() {
            return INSUFFICIENT_SIZE;
        }
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_micros() as u64);
        for (i, p) in mine.iter().enumerate() {
            unsafe {
                *samples.add(i) = ProcessUtilizationSample {
                    pid: p.1,
                    time_stamp: now_us,
                    sm_util: p.3,
                    mem_util: p.4,
                    enc_util: 0,
                    dec_util: 0,
                };
            }
        }
        SUCCESS
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkState(
    d: Device,
    link: c_uint,
    active: *mut c_int,
) -> Ret {
    with_gpu!(d, |g| match g.nvlink {
        Some(n) if link < n.links => {
            // The last links are the ones down.
            unsafe { *active = c_int::from(link < n.up) };
            SUCCESS
        }
        Some(_) => INVALID_ARGUMENT,
        None => NOT_SUPPORTED,
    })
}

/// `nvmlGpmSupport_t`.
#[repr(C)]
pub struct GpmSupport {
    version: c_uint,
    is_supported_device: c_uint,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpmQueryDeviceSupport(d: Device, s: *mut GpmSupport) -> Ret {
    with_gpu!(d, |g| unsafe {
        if (*s).version != 1 {
            return INVALID_ARGUMENT;
        }
        (*s).is_supported_device = c_uint::from(g.gpm.is_some());
        SUCCESS
    })
}

/// GPM samples: handle → the device it was last taken on.
fn gpm_samples() -> &'static std::sync::Mutex<std::collections::HashMap<usize, usize>> {
    static S: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<usize, usize>>> =
        std::sync::OnceLock::new();
    S.get_or_init(Default::default)
}

static NEXT_GPM_SAMPLE: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0x10_0000);

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpmSampleAlloc(sample: *mut *mut c_void) -> Ret {
    let h = NEXT_GPM_SAMPLE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    gpm_samples()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(h, 0);
    unsafe { *sample = h as *mut c_void };
    SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpmSampleFree(sample: *mut c_void) -> Ret {
    match gpm_samples()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&(sample as usize))
    {
        Some(_) => SUCCESS,
        None => INVALID_ARGUMENT,
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpmSampleGet(d: Device, sample: *mut c_void) -> Ret {
    with_gpu!(d, |g| {
        if g.gpm.is_none() {
            return NOT_SUPPORTED;
        }
        match gpm_samples()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&(sample as usize))
        {
            Some(dev) => {
                *dev = d as usize;
                SUCCESS
            }
            None => INVALID_ARGUMENT,
        }
    })
}

/// `nvmlGpmMetric_t`.
#[repr(C)]
pub struct GpmMetric {
    metric_id: c_uint,
    nvml_return: Ret,
    value: f64,
    short_name: *mut c_char,
    long_name: *mut c_char,
    unit: *mut c_char,
}

/// `nvmlGpmMetricsGet_t` (as nvml-wrapper-sys 0.10 lays it out: 210 metrics).
#[repr(C)]
pub struct GpmMetricsGet {
    version: c_uint,
    num_metrics: c_uint,
    sample1: *mut c_void,
    sample2: *mut c_void,
    metrics: [GpmMetric; 210],
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpmMetricsGet(req: *mut GpmMetricsGet) -> Ret {
    let req = unsafe { &mut *req };
    if req.version != 1 || req.num_metrics as usize > req.metrics.len() {
        return INVALID_ARGUMENT;
    }
    let samples = gpm_samples().lock().unwrap_or_else(|p| p.into_inner());
    let (Some(&d1), Some(&d2)) = (
        samples.get(&(req.sample1 as usize)),
        samples.get(&(req.sample2 as usize)),
    ) else {
        return INVALID_ARGUMENT;
    };
    // Two samples of the same GPU.
    let Some(g) = gpu(d2 as Device).filter(|_| d1 == d2) else {
        return INVALID_ARGUMENT;
    };
    let Some(gpm) = g.gpm else {
        return NOT_SUPPORTED;
    };
    for m in &mut req.metrics[..req.num_metrics as usize] {
        // Graphics, SM, occupancy, tensor (any), DRAM, FP64, FP32, FP16.
        let slot = match m.metric_id {
            1 => Some(0),
            2 => Some(1),
            3 => Some(2),
            5 => Some(3),
            10 => Some(4),
            11 => Some(5),
            12 => Some(6),
            13 => Some(7),
            _ => None,
        };
        match slot {
            Some(i) => {
                m.value = gpm[i];
                m.nvml_return = SUCCESS;
            }
            None => m.nvml_return = NOT_SUPPORTED,
        }
        m.short_name = std::ptr::null_mut();
        m.long_name = std::ptr::null_mut();
        m.unit = std::ptr::null_mut();
    }
    SUCCESS
}
