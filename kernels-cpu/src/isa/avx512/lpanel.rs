//! (in progress) panel kernels, see `PanelFn`.

use crate::isa::PanelFn;
use crate::types::WeightType;

pub fn panel(_t: WeightType) -> Option<PanelFn> {
    None
}
