% Reference for voxfit's --scaling global: SPM12's session-specific grand mean scaling (spm_fmri_spm_ui.m r7738)
% with spm_global.c r4921's two loops followed literally, then spm_spm.m r7738's OLS (W = I, no filter).
% No SPM code is called or copied: the scans are read from the raw Analyze files as spm_vol/mayo2nifti1 r7147 read
% them (int16 x roi_scale + funused1, in double). Run in the folder made by
% `python spm12_global_scaling.py make DIR` (see README.md in this folder).
n = 24; files = cell(n, 1);
for s = 1:n, files{s} = sprintf('scans/s%02d', s - 1); end
g = zeros(n, 1); vols = cell(n, 1); slope = zeros(n, 1); inter = zeros(n, 1);
for s = 1:n
  fid = fopen([files{s} '.hdr'], 'r', 'ieee-le');
  fseek(fid, 40, 'bof'); dim = fread(fid, 8, 'int16')';
  fseek(fid, 70, 'bof'); dt = fread(fid, 1, 'int16');
  fseek(fid, 108, 'bof'); vox_offset = fread(fid, 1, 'float32');
  roi_scale = fread(fid, 1, 'float32'); funused1 = fread(fid, 1, 'float32');  % mayo2nifti1: scl_slope, scl_inter
  fclose(fid);
  assert(dt == 4);                                    % int16
  fid = fopen([files{s} '.img'], 'r', 'ieee-le'); fseek(fid, vox_offset, 'bof');
  raw = reshape(fread(fid, prod(dim(2:4)), 'int16=>double'), dim(2:4)); fclose(fid);
  slope(s) = roi_scale; inter(s) = funused1;
  vol = raw * slope(s) + inter(s);                    % spm_vol_utils: value * scale + offset, in double
  vols{s} = vol;
  % spm_global.c: first loop, over planes, the sum and count of finite voxels; s1 = sum / (8 m)
  s1 = 0.0; m = 0;
  for i = 1:dim(4)
    dat = vol(:, :, i);
    for j = 1:numel(dat)
      if isfinite(dat(j)), s1 = s1 + dat(j); m = m + 1; end
    end
  end
  s1 = s1 / (8.0 * m);
  % second loop: the mean of the finite voxels above s1
  s2 = 0.0; m = 0;
  for i = 1:dim(4)
    dat = vol(:, :, i);
    for j = 1:numel(dat)
      if isfinite(dat(j)) && dat(j) > s1, s2 = s2 + dat(j); m = m + 1; end
    end
  end
  g(s) = s2 / m;
end
% spm_fmri_spm_ui.m: GM = 100; iGXcalc 'none' -> gSF(Sess(1).row) = GM ./ mean(g(Sess(1).row));
% then pinfo(1:2, :) * gSF(i): the scale factor and offset of each scan multiplied by gSF
GM = 100; gSF = GM ./ g; gSF(1:n) = GM ./ mean(g(1:n));
fid = fopen('X.bin', 'r'); X = reshape(fread(fid, Inf, 'double'), n, []); fclose(fid);
fid = fopen('mask.bin', 'r'); msk = logical(fread(fid, Inf, 'uint8')); fclose(fid);
Y = zeros(n, nnz(msk));
for s = 1:n
  fid = fopen([files{s} '.img'], 'r', 'ieee-le');
  raw = fread(fid, Inf, 'int16=>double'); fclose(fid);
  Y(s, :) = raw(msk)' * (slope(s) * gSF(s)) + inter(s) * gSF(s);
end
% spm_spm.m with no filter (K = 1) and W = I: xX.pKX = spm_sp('x-', xX.xKXs) (pinv by SVD); beta = pKX * KWY
pKX = pinv(X);
beta = pKX * Y;
c = [1 0.5 0]';
con = c' * beta;
fid = fopen('out_g.bin', 'w'); fwrite(fid, g, 'double'); fclose(fid);
fid = fopen('out_beta.bin', 'w'); fwrite(fid, beta, 'double'); fclose(fid);
fid = fopen('out_con.bin', 'w'); fwrite(fid, con, 'double'); fclose(fid);
printf('%s\n', version());
printf('gSF %.17g  mean g %.17g\n', gSF(1), mean(g));
