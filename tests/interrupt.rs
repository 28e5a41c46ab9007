//! A signal during an L-BFGS solve is an error, never a finished fit. Its own test binary:
//! the stop request is process-wide and would stop every test running beside it.
use cnnprobe::probe::lbfgs::{minimize, Basis};
use cnnprobe::util::interrupt;
use tch::{Kind, Tensor};

#[test]
fn an_interrupted_solve_is_an_error() {
    tch::manual_seed(0);
    let x = Tensor::randn([200, 8], (Kind::Float, tch::Device::Cpu));
    let y = Tensor::randint(3, [200], (Kind::Int64, tch::Device::Cpu));
    let basis = Basis::new(&x, &y, 3);
    let p = basis.problem(1e-3);
    // Unstopped, the same problem solves.
    let sol = minimize(&p, p.zeros(), 100, 1e-4).expect("solves");
    assert!(sol.iterations > 0);
    interrupt::request();
    let err = minimize(&p, p.zeros(), 100, 1e-4).err().expect("an interrupted solve must fail");
    assert_eq!(err.to_string(), interrupt::INTERRUPTED);
}
