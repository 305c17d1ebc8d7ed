# hvtrace_add_test(NAME <name> SOURCES ... [LIBS ...] [LABELS unit|integration|...] [TIMEOUT s])
# One GoogleTest executable. Unit tests are registered with CTest case by case; integration tests
# boot the real guest, so each binary is one CTest test (its fixture's guest is shared by its cases)
# with a long timeout and a lock so two boots do not fight for the machine's 2 cores.
function(hvtrace_add_test)
  cmake_parse_arguments(T "" "NAME;TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest GTest::gmock GTest::gtest_main hvtrace_warnings)
  if(NOT T_LABELS)
    set(T_LABELS unit)
  endif()
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 60)
  endif()
  set(props LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT})
  if("integration" IN_LIST T_LABELS)
    # One CTest test per binary, so a suite's shared guest boots once, not once per test case
    # (gtest prints every case). The lock keeps two boots from fighting for the 2 cores.
    add_test(NAME ${T_NAME} COMMAND ${T_NAME} --gtest_color=no)
    set_tests_properties(${T_NAME} PROPERTIES ${props} RESOURCE_LOCK guest_vm)
  else()
    gtest_discover_tests(${T_NAME} DISCOVERY_TIMEOUT 30 PROPERTIES ${props})
  endif()
  # Aggregate targets, so the sanitizer stages of scripts/test build only what they run.
  foreach(l ${T_LABELS})
    if(NOT TARGET hvtrace_${l}_tests)
      add_custom_target(hvtrace_${l}_tests)
    endif()
    add_dependencies(hvtrace_${l}_tests ${T_NAME})
  endforeach()
endfunction()

# Add every subfolder of the current folder that has a CMakeLists.txt, so areas (vm/, mem/,
# monitor/ ...) never edit a shared list.
function(hvtrace_add_area_folders)
  file(GLOB parts LIST_DIRECTORIES true CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*)
  foreach(p ${parts})
    if(IS_DIRECTORY ${p} AND EXISTS ${p}/CMakeLists.txt)
      add_subdirectory(${p})
    endif()
  endforeach()
endfunction()
