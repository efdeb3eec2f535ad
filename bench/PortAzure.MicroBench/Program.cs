using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;

// Short runs in-process: the machine is shared, and these are microsecond-scale methods.
// dotnet run -c Release --project bench/PortAzure.MicroBench -- --filter '*'
var config = DefaultConfig.Instance.AddJob(Job.ShortRun.WithToolchain(InProcessEmitToolchain.Instance).WithId("ShortRun-InProcess"));
BenchmarkSwitcher.FromAssembly(typeof(PortAzure.Benchmarks.Sample).Assembly).Run(args, config);
