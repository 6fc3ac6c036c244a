% Reference for voxfit.inference.rft: SPM12's own random field theory functions (spm_est_smoothness,
% spm_resels_vol, spm_ECdensity, spm_P_RF, spm_P, spm_uc, spm_uc_RF, spm_uc_clusterFDR, spm_P_clusterFDR,
% spm_uc_peakFDR, spm_P_peakFDR) on the residuals and maps made by `python spm12_rft.py make DIR`.
% Run in DIR with `spm_path` set to a copy of SPM12 whose mex files (spm_sample_vol, spm_resels_vol,
% spm_bwlabel, spm_get_lm, @file_array/private/*) were compiled for Octave (see README.md in this folder).
addpath(spm_path);
n = 20; dof = 18; df = [1 dof];
files = cell(n, 1);
for s = 1:n, files{s} = sprintf('ResI_%04d.nii', s); end
V = spm_vol(char(files)); VM = spm_vol('mask.nii');

% smoothness: all 20 standardised residual images, then every other one (10 maps) with ndf = [20 18]
[fwhm, VRpv, resels] = spm_est_smoothness(V, VM, [n dof]);
rpv = spm_read_vols(spm_vol(VRpv.fname)); delete(VRpv.fname);
[fwhm_sub, VRpv, resels_sub] = spm_est_smoothness(V(1:2:end), VM, [n dof]);
rpv_sub = spm_read_vols(spm_vol(VRpv.fname)); delete(VRpv.fname);
resels_unit = spm_resels_vol(VM, [1 1 1])';
resels_aniso = spm_resels_vol(VM, [2.5 3 4])';
S = sum(spm_read_vols(VM)(:) > 0);

% EC densities
ec_u_z = [-1 0 0.5 1 2 3 4.5 6];
ec_z = spm_ECdensity('Z', ec_u_z, [1 1]);
ec_u_t = [-1 0 1 2 3 4.5 6];
ec_t10 = spm_ECdensity('T', ec_u_t, [1 10]);
ec_t40 = spm_ECdensity('T', ec_u_t, [1 40]);
ec_u_f = [0.5 1 2 4 8 12];
ec_f3_20 = spm_ECdensity('F', ec_u_f, [3 20]);
ec_f2_50 = spm_ECdensity('F', ec_u_f, [2 50]);

% spm_P_RF over a grid: rows [c k u P p Ec Ek] for T (df [1 18]), Z, F ([2 18]) and a conjunction (T, n = 2)
prf = [];
cases = {'T', df, 1; 'Z', [1 1], 1; 'F', [2 dof], 1; 'T', df, 2};
for q = 1:size(cases, 1)
  for c = [1 2 3]
    for k = [0 0.05 0.5 2]
      for u = [2.5 3.5 5 7]
        [P, p, Ec, Ek] = spm_P_RF(c, k, u, cases{q, 2}, cases{q, 1}, resels, cases{q, 3});
        prf(end + 1, :) = [q c k u P p Ec Ek];
      end
    end
  end
end
% a 2-D search volume (R has 3 counts) and a 1-D one
[P, p, Ec, Ek] = spm_P_RF(1, 0.2, 3, df, 'T', [1 4 9], 1); prf_2d = [P p Ec Ek];
[P, p, Ec, Ek] = spm_P_RF(1, 0.2, 3, df, 'T', [1 4], 1); prf_1d = [P p Ec Ek];

% thresholds: rows [case alpha spm_uc_RF spm_uc(with S)]
uc = [];
for q = 1:3
  for a = [0.05 0.01]
    uc(end + 1, :) = [q a spm_uc_RF(a, cases{q, 2}, cases{q, 1}, resels, 1) spm_uc(a, cases{q, 2}, cases{q, 1}, resels, 1, S)];
  end
end
uc_conj = spm_uc(0.05, df, 'T', resels, 2, S);
% voxel-level FWE with the Bonferroni bound: spm_P(1, 0, u, ..., S)
peak_u = [3 4 5 6 8];
peak_fwe = zeros(size(peak_u));
for i = 1:numel(peak_u), peak_fwe(i) = spm_P(1, 0, peak_u(i), df, 'T', resels, 1, S); end

% topological FDR on the statistic map, cluster-forming height ui (as spm_getSPM and spm_list)
Z = fread(fopen('stat.bin'), Inf, 'float64')';
mask = spm_read_vols(VM) > 0;
[x, y, z] = ind2sub(size(mask), find(mask));
XYZ = [x y z]';
ui = 2.5;
V2R = 1 / prod(fwhm);
[uc_fdr, Pc, ue] = spm_uc_clusterFDR(0.05, df, 'T', resels, 1, Z, XYZ, V2R, ui);
A = spm_clusters(XYZ(:, Z >= ui));
N = histc(A, (0:max(A)) + 0.5); N = N(1:end - 1);
cluster_k = N * V2R;
cluster_q = zeros(size(N)); cluster_P = zeros(size(N)); cluster_p = zeros(size(N));
for i = 1:numel(N)
  cluster_q(i) = spm_P_clusterFDR(cluster_k(i), df, 'T', resels, 1, ui, sort(Pc(:)));  % a sorted column, as spm_list passes it
  [cluster_P(i), cluster_p(i)] = spm_P(1, cluster_k(i), ui, df, 'T', resels, 1, S);
end
cluster_fdr_u = uc_fdr * V2R; cluster_fwe_u = ue * V2R;  % in resels
[up, Pp] = spm_uc_peakFDR(0.05, df, 'T', resels, 1, Z, XYZ, ui);
I = find(Z >= ui);
[Np, peaks] = spm_max(Z(I), XYZ(:, I));
peak_q = zeros(size(peaks));
for i = 1:numel(peaks), peak_q(i) = spm_P_peakFDR(peaks(i), df, 'T', resels, 1, ui, sort(Pp(:))); end
peak_fdr_u = up;
set_p = spm_P(numel(N), 0, ui, df, 'T', resels, 1, S);
set_p_k = spm_P(numel(N), 2 * V2R, ui, df, 'T', resels, 1, S);

% the same on given lists of cluster extents (resels) and peak heights, with their uncorrected p-values sorted
% as spm_uc_clusterFDR and spm_uc_peakFDR sort them
syn_k = [0.02 0.05 0.1 0.3 0.6 1.0 2.0 0.1];
syn_kp = zeros(size(syn_k));
for i = 1:numel(syn_k), [P, syn_kp(i)] = spm_P_RF(1, syn_k(i), ui, df, 'T', resels, 1); end
syn_kq = zeros(size(syn_k));
for i = 1:numel(syn_k), syn_kq(i) = spm_P_clusterFDR(syn_k(i), df, 'T', resels, 1, ui, sort(syn_kp(:))); end
syn_z = [2.6 3 3.5 4 4.5 5 6 3.5];
[P, p, Eu] = spm_P_RF(1, 0, ui, df, 'T', resels, 1);
syn_zp = zeros(size(syn_z));
for i = 1:numel(syn_z), [P, p, Ez] = spm_P_RF(1, 0, syn_z(i), df, 'T', resels, 1); syn_zp(i) = Ez / Eu; end
syn_zq = zeros(size(syn_z));
for i = 1:numel(syn_z), syn_zq(i) = spm_P_peakFDR(syn_z(i), df, 'T', resels, 1, ui, sort(syn_zp(:))); end

save('-v7', 'out.mat', 'fwhm', 'resels', 'rpv', 'fwhm_sub', 'resels_sub', 'rpv_sub', 'resels_unit', ...
     'resels_aniso', 'S', 'ec_u_z', 'ec_z', 'ec_u_t', 'ec_t10', 'ec_t40', 'ec_u_f', 'ec_f3_20', 'ec_f2_50', ...
     'prf', 'prf_2d', 'prf_1d', 'uc', 'uc_conj', 'peak_u', 'peak_fwe', 'ui', 'V2R', 'N', 'cluster_k', ...
     'cluster_q', 'cluster_P', 'cluster_p', 'cluster_fdr_u', 'cluster_fwe_u', 'Pc', 'Pp', 'peaks', 'peak_q', ...
     'peak_fdr_u', 'set_p', 'set_p_k', 'syn_k', 'syn_kp', 'syn_kq', 'syn_z', 'syn_zp', 'syn_zq');
