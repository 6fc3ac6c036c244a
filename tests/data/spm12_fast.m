% Reference for voxfit's --noise fast: SPM12's FAST components (spm_Ce('fast', n, TR)) and their ReML weights
% (spm_reml), then SPM's whitening matrix as spm_spm / spm_est_non_sphericity make it (V scaled to trace n,
% W = spm_sqrtm(spm_inv(V)), entries below 1e-6 dropped). SPM12's own functions are called from its folder
% (on the path; not copied here). Run in the folder made by `python spm12_fast.py make DIR`.
X = load('X.txt'); Cy = load('Cy.txt'); tr = load('tr.txt');
n = size(X, 1);
Q = spm_Ce('fast', n, tr);
[V, h] = spm_reml(Cy, X, Q);
V = V * n / trace(V);
W = spm_sqrtm(spm_inv(V));
W = W .* (abs(W) > 1e-6);
fid = fopen('h.txt', 'w'); fprintf(fid, '%.17g\n', full(h)); fclose(fid);
dlmwrite('V.txt', full(V), 'delimiter', ' ', 'precision', '%.17g');
dlmwrite('W.txt', full(W), 'delimiter', ' ', 'precision', '%.17g');
fid = fopen('m.txt', 'w'); fprintf(fid, '%d\n', numel(Q)); fclose(fid);
