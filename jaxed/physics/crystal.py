"""Crystal structures: CIF input through gemmi, space-group expansion, anisotropic displacements.

Two objects describe a structure (docs/STYLE.md: data are immutable pytrees):

* :class:`Crystal` — everything that does not change during a refinement: the cell, the space-group operations, the
  chemical species of each asymmetric-unit (ASU) site, electron form-factor coefficients and the site-symmetry weights.
* :class:`AtomParams` — the differentiable part: fractional coordinates, ADPs (as U* tensors) and occupancies of the
  ASU sites.

The unit cell is produced from the ASU by :func:`expand`, a pure JAX function: each ASU site is mapped by the
operations that give its distinct images (chosen once, on the host, when the structure is read), so that a site on a
special position, which several operations map onto itself, counts exactly once (docs/PHYSICS.md §3.1, "classic
factor-of-multiplicity bug") and no work is spent on coinciding images (24× less for GaAs).
ADP tensors follow the operations as U*' = R U* Rᵀ (PHYSICS.md §3.2).

Cartesian frame (gemmi's orthogonalisation): a ∥ x, b in the xy plane. ``direct`` has columns a, b, c [Å];
``reciprocal`` = direct⁻ᵀ has columns a*, b*, c* [Å⁻¹] (no 2π).
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial
from pathlib import Path
from typing import Sequence

import gemmi
import jax
import jax.numpy as jnp
import numpy as np

from jaxed.errors import JaxedInputError
from jaxed.physics.scattering import form_factor_coefficients

__all__ = [
    "AtomParams",
    "Crystal",
    "load_structure",
    "expand",
    "expand_to_p1",
    "inversion_at_origin",
    "u_cif_to_u_star",
    "u_star_to_u_cif",
    "u_equivalent",
    "format_su",
    "write_structure_cif",
]


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["frac", "u_star", "occupancy"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class AtomParams:
    """Differentiable parameters of the asymmetric unit.

    Attributes:
        frac: fractional coordinates, (n_asu, 3) [–].
        u_star: anisotropic displacement tensors U* = N U_cif N, N = diag(a*, b*, c*), (n_asu, 3, 3) [–];
            the Debye–Waller factor is exp(−2π² hᵀ U* h). Isotropic sites carry U_iso·G* (G* the reciprocal metric).
        occupancy: site occupancies, (n_asu,) [–].
    """

    frac: jax.Array
    u_star: jax.Array
    occupancy: jax.Array


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["direct", "reciprocal", "rotations", "translations", "species", "image_ops", "image_mask", "ff_a",
                 "ff_b"],
    meta_fields=["name", "cell", "spacegroup", "labels", "elements", "site_elements", "aniso", "scattering", "volume",
                 "centric"],
)
@dataclasses.dataclass(frozen=True)
class Crystal:
    """Fixed description of a crystal (everything but the refinable atom parameters).

    Attributes:
        direct: columns a, b, c in Cartesian coordinates, (3, 3) [Å].
        reciprocal: columns a*, b*, c*, (3, 3) [Å⁻¹]; reciprocal = direct⁻ᵀ.
        rotations: space-group rotation parts acting on fractional coordinates, (n_ops, 3, 3) [–].
        translations: translation parts, (n_ops, 3) [–] (centring included: one row per full operation).
        species: index of each ASU site's element into ``elements``, (n_asu,) int.
        image_ops: for each ASU site, the operations that give its distinct unit-cell images, (n_asu, m) int
            (m = the largest multiplicity; padded with 0).
        image_mask: (n_asu, m) bool, False on padding.
        ff_a, ff_b: electron form-factor coefficients per species, (n_species, 5) each (see jaxed.physics.scattering).
        name: CIF block name.  cell: (a, b, c [Å], α, β, γ [deg]).  spacegroup: Hermann–Mauguin symbol.
        labels: ASU site labels.  elements: species symbols.  site_elements: element of each ASU site.
        aniso: whether each site was given anisotropic ADPs.  scattering: 'lobato' or 'peng'.  volume: Ω [Å³].
        centric: whether the operations hold the inversion −x, −y, −z with zero translation
            (:func:`inversion_at_origin`), decided on the host when the crystal is built and static thereafter, so
            traced code (the real-arithmetic path of jaxed.physics.bloch) never has to look at operation values.
            A host-built crystal whose operations disagree with it is refused (``dataclasses.replace`` of the
            operations must pass the new value).
    """

    direct: jax.Array
    reciprocal: jax.Array
    rotations: jax.Array
    translations: jax.Array
    species: jax.Array
    image_ops: jax.Array
    image_mask: jax.Array
    ff_a: jax.Array
    ff_b: jax.Array
    name: str
    cell: tuple
    spacegroup: str
    labels: tuple
    elements: tuple
    site_elements: tuple
    aniso: tuple
    scattering: str
    volume: float
    centric: bool

    def __post_init__(self):
        # Only host (numpy) operations are checked; during tracing the leaves are tracers or placeholders and the
        # static flag is taken as it is.
        if isinstance(self.rotations, np.ndarray) and isinstance(self.translations, np.ndarray):
            actual = inversion_at_origin(self.rotations, self.translations)
            if bool(self.centric) != actual:
                raise ValueError(f"Crystal {self.name!r}: centric = {self.centric} but the operations "
                                 f"{'hold' if actual else 'do not hold'} the inversion at the origin")

    @property
    def n_asu(self) -> int:
        return len(self.labels)

    @property
    def n_ops(self) -> int:
        return int(np.shape(self.rotations)[0])

    def multiplicities(self) -> np.ndarray:
        """Number of distinct unit-cell positions generated by each ASU site (Wyckoff multiplicity)."""
        return np.asarray(self.image_mask).sum(axis=1).astype(int)


def inversion_at_origin(rotations: np.ndarray, translations: np.ndarray) -> bool:
    """Whether the operations hold the inversion −x, −y, −z with an integer translation (host, numpy).

    Then U_g is real for every g (PHYSICS.md §3: U_{−g} = U_g*, and inversion through the origin makes
    U_{−g} = U_g). A centrosymmetric group described with its centre elsewhere (origin choice 1, a shifted origin)
    answers False: its U_g are complex.

    Args:
        rotations: (n_ops, 3, 3) [–].  translations: (n_ops, 3) [–], fractional.
    """
    rot = np.asarray(rotations, dtype=np.float64)
    trans = np.asarray(translations, dtype=np.float64)
    inversion = np.all(np.abs(rot + np.eye(3)) < 1e-9, axis=(1, 2))
    at_origin = np.all(np.abs(trans - np.rint(trans)) < 1e-9, axis=1)
    return bool(np.any(inversion & at_origin))


def _cell_matrices(cell: gemmi.UnitCell) -> tuple[np.ndarray, np.ndarray]:
    direct = np.array(cell.orth.mat.tolist(), dtype=np.float64)
    reciprocal = np.linalg.inv(direct).T
    return direct, reciprocal


def u_cif_to_u_star(u_cif: np.ndarray, reciprocal: np.ndarray) -> np.ndarray:
    """U* = N U_cif N with N = diag(|a*|, |b*|, |c*|) (PHYSICS.md §3.2) (host, numpy).

    Args:
        u_cif: (..., 3, 3) CIF U_ij [Å²].  reciprocal: (3, 3) columns a*, b*, c* [Å⁻¹].

    Returns:
        (..., 3, 3) U* [–].
    """
    n = np.linalg.norm(np.asarray(reciprocal), axis=0)
    return np.asarray(u_cif) * n[:, None] * n[None, :]


def u_star_to_u_cif(u_star, reciprocal):
    """Inverse of :func:`u_cif_to_u_star`: U_cif = N⁻¹ U* N⁻¹.

    Array operators only: numpy in → numpy out (CIF writing), JAX in → JAX out (traced derived quantities).

    Args:
        u_star: (..., 3, 3) [–].  reciprocal: (3, 3) columns a*, b*, c* [Å⁻¹].

    Returns:
        (..., 3, 3) CIF U_ij [Å²].
    """
    n = (reciprocal * reciprocal).sum(axis=0) ** 0.5
    return u_star / (n[:, None] * n[None, :])


def u_equivalent(u_star, direct):
    """Equivalent isotropic displacement U_eq = tr(U_cart)/3 with U_cart = A U* Aᵀ [Å²] (PHYSICS.md §3.2; the
    CIF ``_atom_site_U_iso_or_equiv`` of an anisotropic site, Fischer & Tillmanns 1988).

    Array operators only: numpy in → numpy out (CIF and report writing), JAX in → JAX out (absorption, traced).

    Args:
        u_star: (..., 3, 3) U* tensors [–].  direct: (3, 3) columns a, b, c [Å] (``Crystal.direct``).

    Returns:
        (...,) [Å²].
    """
    u_cart = direct @ u_star @ direct.T
    return u_cart.diagonal(axis1=-2, axis2=-1).sum(axis=-1) / 3.0


def _group_operations(small: gemmi.SmallStructure, where: str) -> tuple[list[gemmi.Op], str]:
    """All operations (centring included) of the structure's space group, from the file's own symop list when given."""
    if small.symops:
        try:
            ops = [gemmi.Op(t) for t in small.symops]
        except (RuntimeError, ValueError) as exc:
            raise JaxedInputError(f"{where}: cannot read a symmetry operation ({exc})") from None
        group = gemmi.GroupOps(ops)
        sg = gemmi.find_spacegroup_by_ops(group)
        name = sg.hm if sg is not None else (small.spacegroup_hm or "unknown")
        return list(group), name
    if small.spacegroup is None:
        raise JaxedInputError(
            f"{where}: no space group: expected _space_group_name_H-M_alt, _symmetry_space_group_name_H-M "
            "or a _space_group_symop_operation_xyz loop"
        )
    return list(small.spacegroup.operations()), small.spacegroup.hm


def _site_symmetry(frac: np.ndarray, u_star: np.ndarray, rot: np.ndarray, trans: np.ndarray, direct: np.ndarray,
                   tol_a: float = 0.02) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stabiliser of each site, and the site projected exactly onto its special position.

    An operation belongs to the stabiliser when it maps the site onto itself modulo lattice translations, within
    ``tol_a`` [Å]. Positions are replaced by the mean of their stabiliser images and U* by the mean of R U* Rᵀ,
    so that coordinates rounded in the CIF (0.833333 for 5/6) and ADPs that break the site symmetry slightly obey
    it exactly; the symmetry expansion then counts each atom once and equals its own P1 expansion.

    Returns:
        (counts (n,), frac (n, 3), u_star (n, 3, 3)).
    """
    images = np.einsum("oij,nj->noi", rot, frac) + trans[None]  # (n, ops, 3)
    delta = images - frac[:, None, :]
    shift = np.rint(delta)
    dist = np.linalg.norm((delta - shift) @ direct.T, axis=-1)
    stab = dist < tol_a  # (n, ops)
    counts = stab.sum(axis=1)
    frac_sym = np.stack([(images[j] - shift[j])[stab[j]].mean(axis=0) for j in range(len(frac))])
    u_img = np.einsum("oij,njk,olk->noil", rot, u_star, rot)
    u_sym = np.stack([u_img[j][stab[j]].mean(axis=0) for j in range(len(frac))])
    return counts, frac_sym, u_sym


def _distinct_images(frac: np.ndarray, rot: np.ndarray, trans: np.ndarray, direct: np.ndarray,
                     tol_a: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """For each site, the first operation of every distinct image (modulo lattice translations), padded."""
    chosen = []
    for x in frac:
        kept: list[int] = []
        images = rot @ x + trans
        for o, y in enumerate(images):
            if all(np.linalg.norm(((y - images[k]) - np.rint(y - images[k])) @ direct.T) >= tol_a for k in kept):
                kept.append(o)
        chosen.append(kept)
    m = max(len(c) for c in chosen)
    ops = np.zeros((len(frac), m), np.int32)
    mask = np.zeros((len(frac), m), bool)
    for j, c in enumerate(chosen):
        ops[j, : len(c)] = c
        mask[j, : len(c)] = True
    return ops, mask


def load_structure(path: str | Path, block: str | None = None, *, scattering: str = "lobato",
                   cif_text: str | None = None) -> tuple[Crystal, AtomParams]:
    """Read a small-molecule CIF with gemmi.

    Args:
        path: CIF file (or a label for messages when ``cif_text`` is given).
        block: data-block name for multi-block files (default: the only block, or the first one with atoms).
        scattering: 'lobato' (Lobato & Van Dyck 2014, default) or 'peng' (ITC C Table 4.3.2.2 via gemmi ``c4322``).
        cif_text: CIF contents, to read from a string instead of the file.

    Returns:
        (crystal, atoms). U_iso or B_iso, U_ij (or B_ij, converted by gemmi), occupancies and hydrogens are read.
    """
    where = str(path)
    try:
        if cif_text is not None:
            doc = gemmi.cif.read_string(cif_text)
        else:
            if not Path(path).is_file():
                raise JaxedInputError(f"{where}: no such file")
            doc = gemmi.cif.read(str(path))
    except JaxedInputError:
        raise
    except (RuntimeError, ValueError) as exc:
        raise JaxedInputError(f"{where}: not a readable CIF ({str(exc).splitlines()[0]})") from None
    if block is not None:
        blk = doc.find_block(block)
        if blk is None:
            names = ", ".join(b.name for b in doc)
            raise JaxedInputError(f"{where}: no data block '{block}' (blocks: {names})")
    else:
        candidates = [b for b in doc if b.find_value("_cell_length_a") is not None and b.find_loop("_atom_site_fract_x")]
        if not candidates:
            raise JaxedInputError(f"{where}: no data block with _cell_length_a and an _atom_site_fract_x loop")
        if len(candidates) > 1:
            names = ", ".join(b.name for b in candidates)
            raise JaxedInputError(f"{where}: several structures ({names}); choose one with --block NAME")
        blk = candidates[0]
    where = f"{where} [data_{blk.name}]"
    try:
        small = gemmi.make_small_structure_from_block(blk)
    except (RuntimeError, ValueError) as exc:
        raise JaxedInputError(f"{where}: cannot read the structure ({exc})") from None
    cell = small.cell
    if not (cell.a > 0 and cell.b > 0 and cell.c > 0 and cell.volume > 0):
        raise JaxedInputError(f"{where}: invalid cell {cell.parameters}: expected positive lengths and volume")
    if len(small.sites) == 0:
        raise JaxedInputError(f"{where}: no atoms in the _atom_site loop")
    ops, sg_name = _group_operations(small, where)
    direct, reciprocal = _cell_matrices(cell)

    labels, site_elements, frac, u_cif, occ, aniso = [], [], [], [], [], []
    g_star = reciprocal.T @ reciprocal  # reciprocal metric tensor [Å⁻²]
    n = np.linalg.norm(reciprocal, axis=0)
    for site in small.sites:
        el = site.element.name
        if el == "X" or site.element.atomic_number == 0:
            raise JaxedInputError(f"{where}: site {site.label}: unknown element '{site.type_symbol}'")
        xyz = np.array([site.fract.x, site.fract.y, site.fract.z])
        if not np.all(np.isfinite(xyz)):
            raise JaxedInputError(f"{where}: site {site.label}: non-finite fractional coordinates")
        labels.append(site.label)
        site_elements.append("H" if el == "D" else el)
        frac.append(xyz)
        occ.append(site.occ)
        if site.aniso.nonzero():
            a = site.aniso
            u = np.array([[a.u11, a.u12, a.u13], [a.u12, a.u22, a.u23], [a.u13, a.u23, a.u33]])
            u_cif.append(u)
            aniso.append(True)
        else:
            u_iso = site.u_iso
            if not np.isfinite(u_iso) or u_iso < 0:
                raise JaxedInputError(f"{where}: site {site.label}: U_iso = {u_iso}: expected a value ≥ 0 [Å²]")
            # U_cif equivalent to an isotropic U: U* = U_iso G*, so U_cif = U* / (n nᵀ).
            u_cif.append(u_iso * g_star / (n[:, None] * n[None, :]))
            aniso.append(False)
    frac = np.array(frac)
    u_star = u_cif_to_u_star(np.array(u_cif), reciprocal)

    rot = np.array([np.array(op.rot, dtype=np.float64) / op.DEN for op in ops])
    trans = np.array([np.array(op.tran, dtype=np.float64) / op.DEN for op in ops])
    _, frac, u_star = _site_symmetry(frac, u_star, rot, trans, direct)
    image_ops, image_mask = _distinct_images(frac, rot, trans, direct)

    elements = tuple(sorted(set(site_elements), key=site_elements.index))
    species = np.array([elements.index(e) for e in site_elements], dtype=np.int32)
    ff_a, ff_b = form_factor_coefficients(elements, scattering)

    crystal = Crystal(
        direct=direct, reciprocal=reciprocal, rotations=rot, translations=trans, species=species,
        image_ops=image_ops, image_mask=image_mask, ff_a=ff_a, ff_b=ff_b,
        name=blk.name, cell=tuple(float(x) for x in cell.parameters), spacegroup=sg_name,
        labels=tuple(labels), elements=elements, site_elements=tuple(site_elements), aniso=tuple(aniso),
        scattering=scattering, volume=float(cell.volume), centric=inversion_at_origin(rot, trans),
    )
    atoms = AtomParams(frac=jnp.asarray(frac), u_star=jnp.asarray(u_star), occupancy=jnp.asarray(np.array(occ)))
    return crystal, atoms


def expand(atoms: AtomParams, crystal: Crystal) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The distinct unit-cell images of every ASU site (pure JAX).

    Returns:
        frac: (n_asu, m, 3) fractional positions R x + t [–];
        u_star: (n_asu, m, 3, 3) tensors R U* Rᵀ [–];
        weight: (n_asu, m) occupancy of each image, 0 on padding: summing over all images counts every atom of
            the cell once.
    """
    ops = jnp.asarray(crystal.image_ops)
    rot = jnp.asarray(crystal.rotations, dtype=atoms.frac.dtype)[ops]  # (n_asu, m, 3, 3)
    trans = jnp.asarray(crystal.translations, dtype=atoms.frac.dtype)[ops]  # (n_asu, m, 3)
    frac = jnp.einsum("nmij,nj->nmi", rot, atoms.frac) + trans
    u_star = jnp.einsum("nmij,njk,nmlk->nmil", rot, atoms.u_star, rot)
    weight = atoms.occupancy[:, None] * jnp.asarray(crystal.image_mask, dtype=atoms.frac.dtype)
    return frac, u_star, weight


def expand_to_p1(crystal: Crystal, atoms: AtomParams, tol_a: float = 0.02) -> tuple[Crystal, AtomParams]:
    """The same structure written in P1: every distinct atom of the unit cell as its own site (host, numpy)."""
    frac, u_star, _ = (np.asarray(x) for x in expand(atoms, crystal))
    direct = np.asarray(crystal.direct)
    labels, elements, xyz, us, occ, aniso = [], [], [], [], [], []
    image_mask = np.asarray(crystal.image_mask)
    for j in range(crystal.n_asu):
        kept: list[np.ndarray] = []
        for o in np.nonzero(image_mask[j])[0]:
            x = frac[j, o] - np.floor(frac[j, o])
            if any(np.linalg.norm(((x - y) - np.rint(x - y)) @ direct.T) < tol_a for y in kept):
                continue
            kept.append(x)
            labels.append(f"{crystal.labels[j]}_{len(kept)}")
            elements.append(crystal.site_elements[j])
            xyz.append(x)
            us.append(u_star[j, o])
            occ.append(float(atoms.occupancy[j]))
            aniso.append(crystal.aniso[j])
    species = np.array([crystal.elements.index(e) for e in elements], dtype=np.int32)
    p1 = dataclasses.replace(
        crystal, rotations=np.eye(3)[None], translations=np.zeros((1, 3)), species=species,
        image_ops=np.zeros((len(labels), 1), np.int32), image_mask=np.ones((len(labels), 1), bool), spacegroup="P 1", labels=tuple(labels),
        site_elements=tuple(elements), aniso=tuple(aniso), centric=False,
    )
    return p1, AtomParams(frac=jnp.asarray(np.array(xyz)), u_star=jnp.asarray(np.array(us)),
                          occupancy=jnp.asarray(np.array(occ)))


def format_su(value: float, su: float | None, *, max_digits: int = 8, plain_digits: int = 6) -> str:
    """CIF/IUCr notation of a value and its standard uncertainty, e.g. (0.46973, 0.00031) → '0.4697(3)'.

    The s.u. is rounded to one significant digit, or two when the first digit is 1 (12 → '(12)', 0.00031 → '(3)'),
    and the value to the same decimal place. Large s.u. (≥ 2) are written in units of the last integer digit
    ('1230(20)' for 1234.5 ± 23, with the value rounded to the same place). A missing, zero or non-finite s.u. gives the
    plain value with ``plain_digits`` decimals.
    """
    if not np.isfinite(value):
        raise JaxedInputError(f"format_su: value {value} is not finite")
    if su is None or not np.isfinite(su) or su <= 0:
        return f"{value:.{plain_digits}f}"
    digits = -math.floor(math.log10(su))  # decimal place of the first significant digit
    half_up = lambda v: int(math.floor(v + 0.5))  # noqa: E731 - 2.5 → 3, not banker's 2
    if half_up(su * 10.0**digits) >= 10:  # 0.0096 rounds to 0.010: first digit is one place higher
        digits -= 1
    if su * 10.0**digits < 2:  # leading 1 (s.u. 1.0–1.99 in these units): keep two digits (rule of 19)
        digits += 1
    digits = min(digits, max_digits)
    if digits >= 0:
        return f"{value:.{digits}f}({half_up(su * 10.0**digits)})"
    unit = 10.0 ** (-digits)
    return f"{round(value / unit) * unit:.0f}({half_up(su / unit) * int(unit)})"


def write_structure_cif(path: str | Path, crystal: Crystal, atoms: AtomParams, *,
                        extra: dict[str, str] | None = None, sigmas: dict[str, np.ndarray] | None = None,
                        loops: Sequence[tuple[Sequence[str], Sequence[Sequence[str]]]] = ()) -> None:
    """Write the structure as a CIF that gemmi (and other programs) can read, in one write.

    ``extra`` adds single-valued items (e.g. ``{"_refine_ls_wR_factor_all": "0.0123"}``). ``sigmas`` may give
    standard uncertainties for 'frac' (n_asu, 3), 'u_cif' (n_asu, 3, 3) and 'u_eq' (n_asu,) [Å²], written in the
    parenthesis notation of :func:`format_su`. ``loops`` appends loops as (tags, rows of values).
    """
    frac = np.asarray(atoms.frac)
    u_cif = np.asarray(u_star_to_u_cif(np.asarray(atoms.u_star), np.asarray(crystal.reciprocal)))
    occ = np.asarray(atoms.occupancy)
    u_eq = np.asarray(u_equivalent(atoms.u_star, crystal.direct))
    sigmas = sigmas or {}
    sig_frac, sig_u, sig_ueq = sigmas.get("frac"), sigmas.get("u_cif"), sigmas.get("u_eq")

    def fmt(value, sigma=None) -> str:
        return format_su(float(value), None if sigma is None else float(sigma))

    a, b, c, al, be, ga = crystal.cell
    lines = [f"data_{crystal.name or 'jaxed'}", f"_cell_length_a {a:.5f}", f"_cell_length_b {b:.5f}",
             f"_cell_length_c {c:.5f}", f"_cell_angle_alpha {al:.4f}", f"_cell_angle_beta {be:.4f}",
             f"_cell_angle_gamma {ga:.4f}", f"_cell_volume {crystal.volume:.4f}",
             f"_space_group_name_H-M_alt '{crystal.spacegroup}'"]
    for key, value in (extra or {}).items():
        lines.append(f"{key} {value}")
    lines += ["", "loop_", "_space_group_symop_operation_xyz"]
    for r, t in zip(np.asarray(crystal.rotations), np.asarray(crystal.translations)):
        op = gemmi.Op()
        op.rot = [[int(round(v * 24)) for v in row] for row in r]
        op.tran = [int(round(v * 24)) % 24 for v in t]
        lines.append(f"'{op.triplet()}'")
    lines += ["", "loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x", "_atom_site_fract_y",
              "_atom_site_fract_z", "_atom_site_U_iso_or_equiv", "_atom_site_adp_type", "_atom_site_occupancy"]
    for j in range(len(crystal.labels)):
        xyz = " ".join(fmt(frac[j, k], None if sig_frac is None else sig_frac[j, k]) for k in range(3))
        adp = "Uani" if crystal.aniso[j] else "Uiso"
        ueq = fmt(u_eq[j], None if sig_ueq is None else sig_ueq[j])
        lines.append(f"{crystal.labels[j]} {crystal.site_elements[j]} {xyz} {ueq} {adp} {occ[j]:.4f}")
    if any(crystal.aniso):
        lines += ["", "loop_", "_atom_site_aniso_label", "_atom_site_aniso_U_11", "_atom_site_aniso_U_22",
                  "_atom_site_aniso_U_33", "_atom_site_aniso_U_23", "_atom_site_aniso_U_13", "_atom_site_aniso_U_12"]
        for j in range(len(crystal.labels)):
            if not crystal.aniso[j]:
                continue
            u = u_cif[j]
            s = None if sig_u is None else sig_u[j]
            vals = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
            lines.append(f"{crystal.labels[j]} " + " ".join(fmt(u[p], None if s is None else s[p]) for p in vals))
    for tags, rows in loops:
        lines += ["", "loop_", *tags] + [" ".join(str(v) for v in row) for row in rows]
    Path(path).write_text("\n".join(lines) + "\n")


def site_positions_cartesian(atoms: AtomParams, crystal: Crystal) -> jax.Array:
    """Cartesian positions of the ASU sites, (n_asu, 3) [Å]."""
    return atoms.frac @ jnp.asarray(crystal.direct).T


def reciprocal_metric(crystal: Crystal) -> np.ndarray:
    """G* = Bᵀ B, the reciprocal metric tensor, (3, 3) [Å⁻²]."""
    r = np.asarray(crystal.reciprocal)
    return r.T @ r


def iso_u_star(u_iso, crystal: Crystal):
    """U* of an isotropic displacement U_iso [Å²]: U_iso · G*, shape (..., 3, 3)."""
    u_iso = jnp.asarray(u_iso)[..., None, None]
    return u_iso * jnp.broadcast_to(jnp.asarray(reciprocal_metric(crystal)), u_iso.shape[:-2] + (3, 3))


def select_sites(crystal: Crystal, atoms: AtomParams, keep: Sequence[int]) -> tuple[Crystal, AtomParams]:
    """A structure with only the ASU sites ``keep`` (e.g. to drop hydrogens)."""
    keep = list(keep)
    elements = tuple(sorted({crystal.site_elements[k] for k in keep}, key=[crystal.site_elements[k] for k in keep].index))
    species = np.array([elements.index(crystal.site_elements[k]) for k in keep], dtype=np.int32)
    ff_a, ff_b = form_factor_coefficients(elements, crystal.scattering)
    c = dataclasses.replace(
        crystal, species=species, image_ops=np.asarray(crystal.image_ops)[keep],
        image_mask=np.asarray(crystal.image_mask)[keep], ff_a=ff_a, ff_b=ff_b,
        labels=tuple(crystal.labels[k] for k in keep), elements=elements,
        site_elements=tuple(crystal.site_elements[k] for k in keep), aniso=tuple(crystal.aniso[k] for k in keep))
    a = AtomParams(frac=atoms.frac[jnp.array(keep)], u_star=atoms.u_star[jnp.array(keep)],
                   occupancy=atoms.occupancy[jnp.array(keep)])
    return c, a
